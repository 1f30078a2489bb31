//go:build !linux

package sim

import (
	"errors"
	"os"
)

// Elsewhere the journal is written with pwrite (one process per fleet).
func lockJournal(*os.File) (bool, error) { return true, nil }

func mapJournal(*os.File, []byte, int) ([]byte, error) {
	return nil, errors.New("no shared mapping on this platform")
}

func unmapJournal([]byte) error { return nil }
