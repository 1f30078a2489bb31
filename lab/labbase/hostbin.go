package labbase

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

const (
	libDir     = "lib/x86_64-linux-gnu"
	interpPath = "lib64/ld-linux-x86-64.so.2"
)

// extraLibs are loaded by glibc with dlopen, which ldd cannot see: libgcc_s
// is needed the moment a thread is cancelled (cryptsetup's PBKDF threads).
var extraLibs = []string{"/lib/x86_64-linux-gnu/libgcc_s.so.1"}

// hostConfigs are optional host files the binaries read; copying the host's
// keeps their defaults identical to the host's.
var hostConfigs = []string{"/etc/mke2fs.conf"}

// lddDeps lists the shared libraries of a host binary: soname -> host path,
// and the program interpreter.
func lddDeps(ctx context.Context, bin string) (map[string]string, string, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).Output()
	if err != nil {
		return nil, "", fmt.Errorf("ldd %s: %w", bin, err)
	}

	libs := map[string]string{}
	interp := ""

	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())

		if name, rest, ok := strings.Cut(line, " => "); ok {
			target := strings.Fields(rest)
			if len(target) == 0 || !strings.HasPrefix(target[0], "/") {
				return nil, "", fmt.Errorf("ldd %s: unresolved library %q", bin, line)
			}

			libs[name] = target[0]

			continue
		}

		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "/") {
			interp = f[0]
		}
	}

	if interp == "" {
		return nil, "", fmt.Errorf("ldd %s: no program interpreter (static binary?)", bin)
	}

	return libs, interp, sc.Err()
}

func (b *builder) collectHostBinaries(ctx context.Context) error {
	if b.opts.TrivialInit {
		return nil
	}

	dsts := make([]string, 0, len(b.opts.HostBinaries))
	for dst := range b.opts.HostBinaries {
		dsts = append(dsts, dst)
	}

	sort.Strings(dsts)

	libs := map[string]string{}
	interp := ""

	for _, dst := range dsts {
		src := b.opts.HostBinaries[dst]

		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("host binary: %w (install cryptsetup-bin and e2fsprogs)", err)
		}

		b.tree.file(dst, data, 0o755)

		l, in, err := lddDeps(ctx, src)
		if err != nil {
			return err
		}

		for k, v := range l {
			libs[k] = v
		}

		interp = in
	}

	for _, lib := range extraLibs {
		if _, err := os.Stat(lib); err == nil {
			libs[filepath.Base(lib)] = lib
		}
	}

	for soname, src := range libs {
		// Copy the file the soname resolves to, under the soname, so no
		// symlinks are needed in the initramfs.
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("shared library %s: %w", soname, err)
		}

		b.tree.file(path.Join(libDir, soname), data, 0o755)
	}

	data, err := os.ReadFile(interp)
	if err != nil {
		return fmt.Errorf("program interpreter: %w", err)
	}

	b.tree.file(interpPath, data, 0o755)

	for _, c := range hostConfigs {
		if data, err := os.ReadFile(c); err == nil {
			b.tree.file(c, data, 0o644)
		}
	}

	b.log.Info("host binaries copied", "binaries", dsts, "libraries", len(libs))

	return nil
}
