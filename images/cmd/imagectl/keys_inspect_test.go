package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// run executes imagectl in-process and returns stdout and the exit code
// main would use.
func run(t *testing.T, args ...string) (string, int, error) {
	t.Helper()

	cmd := newRootCommand()
	cmd.SetArgs(args)

	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)

	err := cmd.ExecuteContext(context.Background())
	if err != nil {
		return out.String(), exitCode(err), err
	}

	return out.String(), 0, nil
}

func TestKeysAndInspectCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")

	out, code, err := run(t, "keys", "generate", "--dir", dir, "-o", "json")
	require.NoError(t, err)
	assert.Equal(t, 0, code)

	var set map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &set))
	assert.Equal(t, filepath.Join(dir, "db.auth"), set["dbAuth"])

	_, code, err = run(t, "keys", "generate", "--dir", dir)
	require.Error(t, err)
	assert.Equal(t, 2, code, "refusing to overwrite is bad input")
	assert.Contains(t, err.Error(), "--force")

	_, code, err = run(t, "keys", "check", "--dir", dir)
	require.NoError(t, err)
	assert.Equal(t, 0, code)

	require.NoError(t, os.Remove(filepath.Join(dir, "pcr-signing-key.pem")))

	_, code, err = run(t, "keys", "check", "--dir", dir)
	require.Error(t, err)
	assert.Equal(t, 2, code)
	assert.Contains(t, err.Error(), "imagectl keys generate --dir "+dir)

	_, code, _ = run(t, "keys", "generate")
	assert.Equal(t, 2, code, "--dir is required")

	notPE := filepath.Join(t.TempDir(), "x.bin")
	require.NoError(t, os.WriteFile(notPE, []byte("hello world, not an image"), 0o644))

	_, code, err = run(t, "inspect", notPE)
	require.Error(t, err)
	assert.Equal(t, 2, code)

	_, code, _ = run(t, "inspect", notPE, "-o", "yaml")
	assert.Equal(t, 2, code)
}

// An unsigned EFI binary checked against a certificate exits 1 and says why.
func TestInspectCLIVerificationFailure(t *testing.T) {
	const efi = "/usr/lib/efitools/x86_64-linux-gnu/HelloWorld.efi"

	if _, err := os.Stat(efi); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing: install Debian package efitools (hack/install-deps.sh)", efi)
		}

		t.Skipf("%s missing (Debian package efitools)", efi)
	}

	dir := filepath.Join(t.TempDir(), "keys")
	_, _, err := run(t, "keys", "generate", "--dir", dir)
	require.NoError(t, err)

	out, code, err := run(t, "inspect", efi, "--cert", filepath.Join(dir, "uki-signing-cert.pem"))
	require.Error(t, err)
	assert.Equal(t, 1, code)
	assert.Contains(t, err.Error(), "the binary is not signed")
	assert.Contains(t, out, ".text")

	_, code, err = run(t, "inspect", efi)
	require.NoError(t, err, "without --cert nothing is verified")
	assert.Equal(t, 0, code)
}
