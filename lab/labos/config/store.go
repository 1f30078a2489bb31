package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// StoredName is the applied config's file at the root of the STATE volume,
// where Talos keeps its machine config (config.yaml on STATE).
const StoredName = "config.yaml"

// ErrNotStored means STATE holds no applied config yet: the node waits for
// one in maintenance mode.
var ErrNotStored = errors.New("no machine config on STATE")

// ErrAlreadyStored refuses a second config: a node accepts one config, once.
var ErrAlreadyStored = errors.New("a machine config is already stored on STATE")

// ReadStored reads the applied config from the mounted STATE volume.
func ReadStored(stateRoot string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(stateRoot, StoredName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotStored
	}

	if err != nil {
		return nil, fmt.Errorf("reading stored machine config: %w", err)
	}

	return data, nil
}

// Store writes data as the applied config, durably: a power cut leaves
// either no config (the node asks again) or the whole one, never a part.
// It refuses to replace an existing config.
func Store(stateRoot string, data []byte) error {
	final := filepath.Join(stateRoot, StoredName)

	if _, err := os.Lstat(final); err == nil {
		return ErrAlreadyStored
	}

	tmp, err := os.CreateTemp(stateRoot, ".config-*.tmp")
	if err != nil {
		return fmt.Errorf("storing machine config: %w", err)
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck

	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()

		return fmt.Errorf("storing machine config: %w", err)
	}

	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()

		return fmt.Errorf("storing machine config: %w", err)
	}

	if err := tmp.Close(); err != nil {
		return fmt.Errorf("storing machine config: %w", err)
	}

	// link, not rename: it fails if another config appeared meanwhile
	if err := os.Link(tmp.Name(), final); err != nil {
		if errors.Is(err, os.ErrExist) {
			return ErrAlreadyStored
		}

		return fmt.Errorf("storing machine config: %w", err)
	}

	dir, err := os.Open(stateRoot)
	if err != nil {
		return fmt.Errorf("storing machine config: %w", err)
	}
	defer dir.Close() //nolint:errcheck

	if err := unix.Fsync(int(dir.Fd())); err != nil {
		return fmt.Errorf("storing machine config: syncing %s: %w", stateRoot, err)
	}

	return nil
}
