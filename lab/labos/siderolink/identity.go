package siderolink

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ProductUUIDPath is where Linux shows the SMBIOS system UUID, the one
// Talos reports as its machine UUID.
const ProductUUIDPath = "/sys/class/dmi/id/product_uuid"

// MachineUUID reads the SMBIOS system UUID (lower case, as Talos reports it).
func MachineUUID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the machine UUID: %w", err)
	}

	u := strings.ToLower(strings.TrimSpace(string(b)))
	if u == "" {
		return "", fmt.Errorf("reading the machine UUID: %s is empty", path)
	}

	return u, nil
}

// UniqueToken returns the node's unique token kept at path, creating it on
// first use. Talos keeps it in META so that a machine that reinstalls is
// still the same machine to the hub; labos keeps it on STATE (written
// before the rename: a power cut leaves the old token or none, never half).
func UniqueToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading the SideroLink unique token: %w", err)
	}

	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("creating the SideroLink unique token: %w", err)
	}

	tok := hex.EncodeToString(raw)

	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("creating the SideroLink unique token: %w", err)
	}

	tmp := path + ".tmp"

	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("creating the SideroLink unique token: %w", err)
	}

	_, err = f.WriteString(tok + "\n")
	if err == nil {
		err = f.Sync()
	}

	if cerr := f.Close(); err == nil {
		err = cerr
	}

	if err == nil {
		err = os.Rename(tmp, path)
	}

	if err != nil {
		return "", fmt.Errorf("writing the SideroLink unique token %s: %w", path, err)
	}

	return tok, nil
}
