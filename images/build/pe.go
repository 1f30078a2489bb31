package build

import (
	"debug/pe"
	"fmt"
	"strings"
)

// readCmdline returns the .cmdline section of a UKI, as the node will see it.
func readCmdline(path string) (string, error) {
	f, err := pe.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading UKI %s: %w", path, err)
	}
	defer f.Close() //nolint:errcheck

	s := f.Section(".cmdline")
	if s == nil {
		return "", fmt.Errorf("UKI %s has no .cmdline section", path)
	}

	data, err := s.Data()
	if err != nil {
		return "", fmt.Errorf("reading .cmdline of %s: %w", path, err)
	}

	// Section data is padded to the file alignment with zeros.
	return strings.TrimRight(string(data), "\x00\n "), nil
}
