package state

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
)

// Files labos keeps on STATE, relative to its mount point: they prove that
// data written by an earlier boot reads back after unlocking.
const (
	TokenFile = "lib/labos/state-token" // random, written when STATE is created
	BootsFile = "lib/labos/boots"       // boots that unlocked STATE
)

// Record is what RecordBoot read and wrote.
type Record struct {
	Token string
	Boots int
}

// RecordBoot writes the token on a freshly formatted STATE, then reads it
// back and increments the boot counter (written durably before returning).
func RecordBoot(mount string, formatted bool) (Record, error) {
	tokenPath := filepath.Join(mount, TokenFile)
	bootsPath := filepath.Join(mount, BootsFile)

	if err := os.MkdirAll(filepath.Dir(tokenPath), 0o700); err != nil {
		return Record{}, fmt.Errorf("recording boot on STATE: %w", err)
	}

	if formatted {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return Record{}, fmt.Errorf("recording boot on STATE: %w", err)
		}

		if err := bootentry.WriteFileAtomic(tokenPath, strings.NewReader(hex.EncodeToString(b)+"\n")); err != nil {
			return Record{}, fmt.Errorf("recording boot on STATE: %w", err)
		}
	}

	tok, err := os.ReadFile(tokenPath)
	if err != nil {
		return Record{}, fmt.Errorf("recording boot on STATE: reading token: %w", err)
	}

	boots := 0

	b, err := os.ReadFile(bootsPath)

	switch {
	case err == nil:
		if boots, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return Record{}, fmt.Errorf("recording boot on STATE: %s: %w", BootsFile, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return Record{}, fmt.Errorf("recording boot on STATE: %w", err)
	}

	boots++

	if err := bootentry.WriteFileAtomic(bootsPath, strings.NewReader(strconv.Itoa(boots)+"\n")); err != nil {
		return Record{}, fmt.Errorf("recording boot on STATE: %w", err)
	}

	return Record{Token: strings.TrimSpace(string(tok)), Boots: boots}, nil
}
