// Package hsmtest makes SoftHSM2 tokens for tests.
package hsmtest

import (
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
func SoftHSM(t *testing.T) *keys.PKCS11 {
	t.Helper()

	if _, err := os.Stat(Module); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("SoftHSM2 missing (%s): run hack/install-deps.sh", Module)
		}

		t.Skipf("SoftHSM2 missing: %v", err)
	}

	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tokens"), 0o700))

	conf := filepath.Join(dir, "softhsm2.conf")
	require.NoError(t, os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600))
	t.Setenv("SOFTHSM2_CONF", conf)

	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "labfleet-test", "--pin", PIN, "--so-pin", "5678").CombinedOutput()
	require.NoError(t, err, "softhsm2-util: %s", out)

	return &keys.PKCS11{
		Module: Module, TokenLabel: "labfleet-test",
		UKIKeyLabel: "uki-signing", PCRKeyLabel: "pcr-signing", PKKeyLabel: "pk", KEKKeyLabel: "kek",
	}
}
