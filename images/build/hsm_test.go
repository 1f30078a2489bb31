//go:build cgo

package build_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/inspect"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/keys/hsm"
	"github.com/labfleet/labfleet/images/keys/hsm/hsmtest"
)

// TestHSMSignedBuild generates a key set inside a SoftHSM2 token (the
// folder gets no private key), builds the image with it and checks every
// signature: sbverify accepts the UKI with the exported certificate,
// inspect verifies .pcrsig against .pcrpkey and the sections, and two
// builds are byte-identical. A wrong PIN is bad input naming the token.
func TestHSMSignedBuild(t *testing.T) {
	cfg := hsmtest.SoftHSM(t)
	f := newFixture(t)

	tok, err := hsm.Open(cfg, hsmtest.PIN)
	require.NoError(t, err)

	dir := filepath.Join(f.root, "hsm-keys")
	ks, err := keys.Generate(dir, keys.GenerateOptions{Token: tok, PKCS11: cfg})
	require.NoError(t, err)
	require.NotNil(t, ks.PKCS11)

	for _, label := range []string{cfg.UKIKeyLabel, cfg.PCRKeyLabel, cfg.PKKeyLabel, cfg.KEKKeyLabel} {
		ext, err := tok.Extractable(label)
		require.NoError(t, err)
		require.False(t, ext, "key %s can leave the token", label)
	}

	require.NoError(t, tok.Close())

	for _, name := range []string{keys.UKISigningKeyFile, keys.PCRSigningKeyFile, keys.PKKeyFile, keys.KEKKeyFile} {
		require.NoFileExists(t, filepath.Join(dir, name))
	}

	// Regenerating into the same token refuses to overwrite its keys.
	tok2, err := hsm.Open(cfg, hsmtest.PIN)
	require.NoError(t, err)
	_, err = keys.Generate(filepath.Join(f.root, "hsm-keys-2"), keys.GenerateOptions{Token: tok2, PKCS11: cfg})
	require.ErrorIs(t, err, keys.ErrExists)
	require.ErrorContains(t, err, `already holds a key labelled "uki-signing"`)
	require.NoError(t, tok2.Close())

	opts := func(out, pin string) build.Options {
		return build.Options{
			Root: f.root, OutDir: out, KeysDir: dir, Baker: staticBaker{config: bootstrapConfig}, Force: true,
			ToolsPath: filepath.Join(f.assets, "tools", "bin"), PKCS11PIN: pin,
		}
	}

	// A wrong PIN is bad input (keys.ErrInvalid: exit 2) naming the token
	// and the variable.
	_, err = build.Build(t.Context(), f.def, opts(filepath.Join(f.root, "bad"), "0000"))
	require.ErrorContains(t, err, `PKCS#11 token "labfleet-test" refused the user PIN in LABFLEET_PKCS11_PIN (incorrect)`)
	require.ErrorIs(t, err, keys.ErrInvalid)

	a, err := build.Build(t.Context(), f.def, opts(filepath.Join(f.root, "a"), hsmtest.PIN))
	require.NoError(t, err)

	uki := filepath.Join(a.Dir, "edge.efi")
	out, err := exec.Command("sbverify", "--cert", ks.UKISigningCert, uki).CombinedOutput()
	require.NoError(t, err, "sbverify: %s", out)

	rep, err := inspect.Inspect(uki, inspect.Options{CertPath: ks.UKISigningCert})
	require.NoError(t, err)
	checked, ok, failures := rep.Verification()
	require.True(t, checked)
	require.True(t, ok, "inspect: %v", failures)
	require.Empty(t, rep.PCRFailures())

	b, err := build.Build(t.Context(), f.def, opts(filepath.Join(f.root, "b"), hsmtest.PIN))
	require.NoError(t, err)
	require.Equal(t, treeDigests(t, a.Dir), treeDigests(t, b.Dir))

	data, err := os.ReadFile(uki)
	require.NoError(t, err)
	require.False(t, bytes.Contains(data, []byte("PRIVATE KEY")))
}
