// Package espfake builds throwaway ESP trees for tests of code that manages
// boot entries (bootentry, node).
package espfake

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
)

// New returns an ESP in a temporary directory with loader.conf (glob
// default lab-*) and the given entries under EFI/Linux (each file holds its name).
func New(t testing.TB, files ...string) bootentry.ESP {
	t.Helper()

	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "EFI/Linux"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "loader"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "loader/loader.conf"),
		[]byte("secure-boot-enroll if-safe\ndefault lab-*\ntimeout 0\n"), 0o644))

	for _, f := range files {
		require.NoError(t, os.WriteFile(filepath.Join(root, "EFI/Linux", f), []byte(f), 0o644))
	}

	return bootentry.ESP{Root: root}
}

// Names lists EFI/Linux, sorted.
func Names(t testing.TB, esp bootentry.ESP) []string {
	t.Helper()

	des, err := os.ReadDir(filepath.Join(esp.Root, "EFI/Linux"))
	require.NoError(t, err)

	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}

	sort.Strings(out)

	return out
}
