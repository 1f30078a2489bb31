package sysinit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ModulesList names the module files to load, dependencies first.
const ModulesList = "/etc/labos/modules"

// ParseModules reads the module list: one path per line (relative to
// /lib/modules/<release> unless absolute), # comments and blanks ignored.
func ParseModules(data []byte) []string {
	var out []string

	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}

		out = append(out, l)
	}

	return out
}

// KernelRelease is uname -r.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}

	return unix.ByteSliceToString(u.Release[:])
}

// LoadModules loads each module with finit_module; modules already loaded
// (or built in) are skipped. It returns the names loaded.
func LoadModules(list []string, dir string) ([]string, error) {
	var loaded []string

	for _, m := range list {
		p := m
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, m)
		}

		if err := loadModule(p); err != nil {
			return loaded, fmt.Errorf("loading module %s: %w", m, err)
		}

		loaded = append(loaded, strings.TrimSuffix(filepath.Base(m), ".ko"))
	}

	return loaded, nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close() //nolint:errcheck

	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}

	return err
}
