// Package treetest reads a directory tree into memory so tests can compare
// two builds byte for byte.
package treetest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Read returns every regular file under dir, keyed by its path relative to dir.
func Read(t testing.TB, dir string) map[string]string {
	t.Helper()

	out := map[string]string{}

	require.NoError(t, filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}

		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}

		out[rel] = string(b)

		return nil
	}))

	return out
}
