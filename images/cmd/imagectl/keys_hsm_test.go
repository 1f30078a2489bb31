//go:build cgo

package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/keys/hsm/hsmtest"
)

// TestKeysGeneratePKCS11 creates a set inside a SoftHSM2 token through the
// CLI: the folder holds pkcs11.json and certificates, no private key, and
// `keys check` accepts it. Without the PIN it is bad input naming the
// variable; --pkcs11 without --token is bad input too.
func TestKeysGeneratePKCS11(t *testing.T) {
	cfg := hsmtest.SoftHSM(t)
	dir := filepath.Join(t.TempDir(), "keys")
	args := []string{"keys", "generate", "--dir", dir, "--pkcs11", cfg.Module, "--token", cfg.TokenLabel}

	t.Setenv(pinEnv, "")
	_, code, err := run(t, args...)
	require.Error(t, err)
	require.Equal(t, 2, code)
	require.ErrorContains(t, err, "LABFLEET_PKCS11_PIN")

	_, code, err = run(t, "keys", "generate", "--dir", dir, "--pkcs11", cfg.Module)
	require.Equal(t, 2, code)
	require.ErrorContains(t, err, "--token")

	t.Setenv(pinEnv, hsmtest.PIN)
	out, code, err := run(t, args...)
	require.NoError(t, err, out)
	require.Equal(t, 0, code)
	require.Contains(t, out, `private keys in PKCS#11 token "labfleet-test"`)

	require.FileExists(t, filepath.Join(dir, keys.PKCS11File))

	for _, name := range []string{keys.UKISigningKeyFile, keys.PCRSigningKeyFile, keys.PKKeyFile, keys.KEKKeyFile} {
		require.NoFileExists(t, filepath.Join(dir, name))
	}

	_, code, err = run(t, "keys", "check", "--dir", dir)
	require.NoError(t, err)
	require.Equal(t, 0, code)

	// A private key file beside pkcs11.json is refused by name.
	require.NoError(t, os.WriteFile(filepath.Join(dir, keys.UKISigningKeyFile), []byte("x"), 0o600))
	_, code, err = run(t, "keys", "check", "--dir", dir)
	require.Equal(t, 2, code)
	require.ErrorContains(t, err, "uki-signing-key.pem present beside pkcs11.json")
}
