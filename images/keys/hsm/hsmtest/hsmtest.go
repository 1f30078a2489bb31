// Package hsmtest makes SoftHSM2 tokens for tests.
package hsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/keys"
)

const (
	Module = "/usr/lib/softhsm/libsofthsm2.so"
	PIN    = "1234"
)

// SoftHSM makes a fresh SoftHSM2 token in a temp dir (SOFTHSM2_CONF
// is set for this test only) and returns its keys.PKCS11.
func SoftHSM(t testing.TB) *keys.PKCS11 {
	t.Helper()

	if _, err := os.Stat(Module); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("SoftHSM2 missing (%s): run hack/install-deps.sh", Module)
		}

		t.Skipf("SoftHSM2 missing: %v", err)
	}

	cfg, conf, err := NewToken(t.TempDir())
	require.NoError(t, err)
	t.Setenv("SOFTHSM2_CONF", conf)

	return cfg
}

// NewToken creates a SoftHSM2 token (label labfleet-test, user PIN PIN)
// whose store is dir and returns it with the configuration file the
// process that opens it must name in SOFTHSM2_CONF (the module reads it at
// initialisation; this function changes no environment).
func NewToken(dir string) (*keys.PKCS11, string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		return nil, "", err
	}

	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return nil, "", err
	}

	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "labfleet-test", "--pin", PIN, "--so-pin", "5678")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)

	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("softhsm2-util --init-token: %w: %s", err, out)
	}

	return &keys.PKCS11{
		Module: Module, TokenLabel: "labfleet-test",
		UKIKeyLabel: "uki-signing", PCRKeyLabel: "pcr-signing", PKKeyLabel: "pk", KEKKeyLabel: "kek",
	}, conf, nil
}
