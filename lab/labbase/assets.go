package labbase

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Assets are the unpacked lab assets (see hack/fetch-lab-assets.sh).
type Assets struct {
	Dir           string
	KernelRelease string
	Vmlinuz       string // path
	KernelConfig  string // path
	ModulesDir    string // /lib/modules/<release> tree, symlinks resolved
	SystemdStub   string // linuxx64.efi.stub
	SystemdBoot   string // systemd-bootx64.efi
}

// LoadAssets checks that dir holds every asset and resolves the paths.
func LoadAssets(dir string) (*Assets, error) {
	rel, err := os.ReadFile(filepath.Join(dir, "kernel.release"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", dir, ErrNoAssets)
		}

		return nil, fmt.Errorf("reading lab assets: %w", err)
	}

	a := &Assets{Dir: dir, KernelRelease: strings.TrimSpace(string(rel))}

	for _, f := range []struct {
		name string
		dst  *string
		dir  bool
	}{
		{"vmlinuz", &a.Vmlinuz, false},
		{"kernel.config", &a.KernelConfig, false},
		{"modules", &a.ModulesDir, true},
		{"systemd-stub.efi", &a.SystemdStub, false},
		{"systemd-boot.efi", &a.SystemdBoot, false},
	} {
		p, err := filepath.EvalSymlinks(filepath.Join(dir, f.name))
		if err != nil {
			return nil, fmt.Errorf("lab asset %s: %w (run hack/fetch-lab-assets.sh)", f.name, err)
		}

		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("lab asset %s: %w", f.name, err)
		}

		if st.IsDir() != f.dir {
			return nil, fmt.Errorf("lab asset %s: %s is not a %s", f.name, p, map[bool]string{true: "directory", false: "file"}[f.dir])
		}

		*f.dst = p
	}

	return a, nil
}

func (b *builder) loadAssets(context.Context) error {
	a, err := LoadAssets(b.opts.AssetsDir)
	if err != nil {
		return err
	}

	b.assets = a
	b.res.KernelVersion = a.KernelRelease
	b.tree = newTree()

	return nil
}
