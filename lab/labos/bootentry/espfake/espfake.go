// Package espfake builds throwaway ESP trees for tests of code that manages
// boot entries (bootentry, node).
package espfake

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

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

// Small returns an ESP on a tmpfs of size bytes, so writes past it fail
// with ENOSPC as on the lab's small FAT ESP, and statfs reports its real
// free space. Mounting needs root: elsewhere the test is skipped (the
// space logic is also covered with an injected FreeSpace).
func Small(t testing.TB, size int64) bootentry.ESP {
	t.Helper()

	root := t.TempDir()
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Skipf("mounting a tmpfs ESP of %d bytes (needs root): %v", size, err)
	}

	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })

	esp := New(t)
	// move the tree New made onto the tmpfs
	for _, d := range []string{"EFI/Linux", "loader"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}

	b, err := os.ReadFile(filepath.Join(esp.Root, bootentry.LoaderConf))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, bootentry.LoaderConf), b, 0o644))

	return bootentry.ESP{Root: root}
}

// Put writes an entry file of size bytes.
func Put(t testing.TB, esp bootentry.ESP, file string, size int) {
	t.Helper()

	require.NoError(t, os.WriteFile(filepath.Join(esp.Root, bootentry.Dir, file), make([]byte, size), 0o644))
}

// WithCapacity makes esp report capacity minus the bytes its files use as
// free space (Install's space check), without mounting anything. Writes do
// not fail when it is exceeded: use Small for real ENOSPC.
func WithCapacity(esp bootentry.ESP, capacity int64) bootentry.ESP {
	esp.FreeSpace = func() (int64, error) {
		var used int64

		err := filepath.WalkDir(esp.Root, func(_ string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}

			fi, err := d.Info()
			if err != nil {
				return err
			}

			used += fi.Size()

			return nil
		})

		return capacity - used, err
	}

	return esp
}
