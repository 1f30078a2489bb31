package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	require.NoError(t, err)

	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}

		require.NotEqual(t, dir, filepath.Dir(dir), "go.mod not found")
		dir = filepath.Dir(dir)
	}
}

// TestExitCodes runs each kind of bad input and failure through the cobra
// root, as main does, and checks the code and that the message names the problem.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(data), 0o644))

		return p
	}

	truncated := write("truncated.efi", "MZ"+strings.Repeat("\x00", 58)+"\x40\x00\x00\x00PE\x00\x00\x64\x86")
	notImage := write("x.bin", "hello, not an image")
	keysDir := filepath.Join(dir, "keys")
	_, _, err := run(t, "keys", "generate", "--dir", keysDir)
	require.NoError(t, err)

	unknownAddon := write("addon.yaml", `
name: edge
version: 1.0.0
talosVersion: v1.14.1
base: {layout: `+filepath.Join(dir, "no-base")+`}
keys: `+keysDir+`
addons: [no-such-addon]
outputs: [uki]
`)
	badDef := write("bad.yaml", "name: edge\nversion: [\n")

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"inspect", "--no-such-flag", notImage}, 2, "no-such-flag"},
		{"missing argument", []string{"inspect"}, 2, "accepts 1 arg"},
		{"bad -o", []string{"inspect", notImage, "-o", "yaml"}, 2, `-o "yaml"`},
		{"inspect: missing file", []string{"inspect", filepath.Join(dir, "nope.efi")}, 2, "nope.efi"},
		{"inspect: not an image", []string{"inspect", notImage}, 2, "not a PE/EFI binary"},
		{"inspect: truncated PE", []string{"inspect", truncated}, 2, "truncated.efi"},
		{"inspect: unreadable certificate", []string{"inspect", notImage, "--cert", notImage}, 2, "certificate"},
		{"build: definition does not parse", []string{"build", badDef, "--root", repoRoot(t), "-q"}, 2, "bad.yaml"},
		{"build: unknown add-on", []string{"build", unknownAddon, "--root", repoRoot(t), "-q", "--out", filepath.Join(dir, "out")}, 2, "addons"},
		{"addons bump: bad version", []string{"addons", "bump", "cilium", "--dir", filepath.Join(repoRoot(t), "extensions"), "--version", "latest", "--dry-run"}, 2, `version: "latest" must be a semantic version`},
		{"addons bump: bad --tag", []string{"addons", "bump", "cilium", "--dir", filepath.Join(repoRoot(t), "extensions"), "--tag", "agent", "--dry-run"}, 2, "--tag"},
		{"keys check: invalid set", []string{"keys", "check", "--dir", dir}, 2, "imagectl keys generate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, code, err := run(t, tc.args...)
			require.Error(t, err)
			require.Equal(t, tc.code, code, "error: %v", err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestEveryHelpDocumentsExitCodes: each command's --help carries the table.
func TestEveryHelpDocumentsExitCodes(t *testing.T) {
	var walk func(c *cobra.Command)

	walk = func(c *cobra.Command) {
		out, code, err := run(t, append(strings.Fields(c.CommandPath())[1:], "--help")...)
		require.NoError(t, err, c.CommandPath())
		require.Equal(t, 0, code)
		require.Contains(t, out, "Exit codes:", "%s --help", c.CommandPath())
		require.Contains(t, out, "2  bad input", "%s --help", c.CommandPath())

		for _, sub := range c.Commands() {
			if sub.Name() != "help" && sub.Name() != "completion" && !sub.Hidden {
				walk(sub)
			}
		}
	}

	walk(newRootCommand())
}
