//go:build cgo

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
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

// TestBuildWithWrongPKCS11PINIsBadInput: a build whose keys live in a token
// and whose LABFLEET_PKCS11_PIN is wrong or unset is bad input (exit 2, as
// the exit-code table says of key problems), and the error names the
// variable and the token. It failed with exit 1 before.
func TestBuildWithWrongPKCS11PINIsBadInput(t *testing.T) {
	cfg := hsmtest.SoftHSM(t)
	dir := t.TempDir()
	keysDir := filepath.Join(dir, "keys")

	t.Setenv(pinEnv, hsmtest.PIN)
	_, _, err := run(t, "keys", "generate", "--dir", keysDir, "--pkcs11", cfg.Module, "--token", cfg.TokenLabel)
	require.NoError(t, err)

	// A base the cache key can describe; the build must stop at the PIN,
	// before reading anything from it.
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64"})
	require.NoError(t, err)
	lp, err := layout.Write(filepath.Join(dir, "base"), empty.Index)
	require.NoError(t, err)
	require.NoError(t, lp.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})))

	def := filepath.Join(dir, "edge.yaml")
	require.NoError(t, os.WriteFile(def, []byte(`
name: edge
version: 1.0.0
talosVersion: v1.14.1
base: {layout: `+filepath.Join(dir, "base")+`}
keys: `+keysDir+`
outputs: [uki]
`), 0o644))

	for _, pin := range []string{"0000", ""} {
		t.Run("PIN "+strconv.Quote(pin), func(t *testing.T) {
			t.Setenv(pinEnv, pin)
			_, code, err := run(t, "build", def, "--root", repoRoot(t), "-q", "--out", filepath.Join(dir, "out"))
			require.Error(t, err)
			require.Equal(t, 2, code, "error: %v", err)
			require.ErrorContains(t, err, "LABFLEET_PKCS11_PIN")
			require.ErrorContains(t, err, `PKCS#11 token "labfleet-test"`)
		})
	}
}
