// Package fsutil writes the site cache's files so that a crash or a kill at
// any instant leaves either the old state or the new, never a torn file:
// data goes to a temporary file in the same directory, is fsynced, then
// renamed over the final name (rename is atomic within one file system),
// and the directory is fsynced so the rename itself survives a power loss.
package fsutil

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteAtomic writes r to path atomically (temp + fsync + rename + dir fsync).
func WriteAtomic(path string, r io.Reader) (int64, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("creating %s: %w", dir, err)
	}

	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return 0, fmt.Errorf("creating temporary file for %s: %w", path, err)
	}

	n, err := io.Copy(tmp, r)
	if err != nil {
		tmp.Close()           //nolint:errcheck
		os.Remove(tmp.Name()) //nolint:errcheck

		return n, fmt.Errorf("writing %s: %w", path, err)
	}

	if err := Commit(tmp, path); err != nil {
		return n, err
	}

	return n, nil
}

// Commit fsyncs and closes f, then renames it to path and fsyncs the
// directory. On error f is removed.
func Commit(f *os.File, path string) error {
	if err := f.Sync(); err != nil {
		f.Close()           //nolint:errcheck
		os.Remove(f.Name()) //nolint:errcheck

		return fmt.Errorf("syncing %s: %w", path, err)
	}

	if err := f.Close(); err != nil {
		os.Remove(f.Name()) //nolint:errcheck

		return fmt.Errorf("closing %s: %w", path, err)
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}

	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name()) //nolint:errcheck

		return fmt.Errorf("renaming into %s: %w", path, err)
	}

	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory so renames and removals in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dir, err)
	}
	defer d.Close()

	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}

	return nil
}
