package labbase

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// buildInit puts /init (labos or the trivial init) and the files labos
// reads about itself into the tree.
func (b *builder) buildInit(ctx context.Context) error {
	var (
		data []byte
		err  error
	)

	switch {
	case b.opts.TrivialInit:
		data, err = b.goBuild(ctx, trivialInitPackage)
	case b.opts.LabosBinary != "":
		data, err = os.ReadFile(b.opts.LabosBinary)
	default:
		data, err = b.goBuild(ctx, b.opts.LabosPackage)
	}

	if err != nil {
		return err
	}

	if err := checkStatic(data); err != nil {
		return fmt.Errorf("/init: %w", err)
	}

	b.tree.file("init", data, 0o755)

	// The kernel opens /dev/console for init's stdio before anything is
	// mounted; without the node init has no output at all.
	b.tree.charDev("dev/console", 0o600, 5, 1)

	for _, d := range []string{"proc", "sys", "run", "tmp", "mnt", "root"} {
		b.tree.dir(d, 0o755)
	}

	b.tree.file("etc/labos/version", []byte(b.opts.Version+"\n"), 0o644)
	b.tree.file("etc/labos/kernel-release", []byte(b.assets.KernelRelease+"\n"), 0o644)

	return nil
}

// goBuild builds a static Go binary reproducibly: -trimpath, no VCS stamp,
// no symbol table, so the same sources give the same bytes.
func (b *builder) goBuild(ctx context.Context, pkg string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "labbase-init-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp) //nolint:errcheck

	out := filepath.Join(tmp, "init")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= -X main.version="+b.opts.Version,
		"-o", out, pkg)
	cmd.Dir = b.opts.RepoDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")

	var stderr bytes.Buffer

	cmd.Stderr = &stderr

	b.log.Info("building init", "package", pkg)

	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s: %w: %s", pkg, err, bytes.TrimSpace(stderr.Bytes()))
	}

	return os.ReadFile(out)
}

// checkStatic refuses an /init that needs a dynamic loader: the kernel would
// fail to start it with a bare "No working init found".
func checkStatic(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an ELF binary: %w", err)
	}

	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("built for %s, need x86-64", f.Machine)
	}

	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("dynamically linked (build with CGO_ENABLED=0)")
		}
	}

	return nil
}
