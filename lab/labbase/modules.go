package labbase

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// moduleIndex knows every module file of a kernel's /lib/modules tree.
type moduleIndex struct {
	dir     string
	files   map[string]string // normalized name -> path relative to dir (as packaged, maybe compressed)
	builtin map[string]bool
}

// normalizeModName makes names comparable the way modprobe does ('-' == '_').
func normalizeModName(s string) string { return strings.ReplaceAll(s, "-", "_") }

var moduleExts = []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"}

func loadModuleIndex(dir string) (*moduleIndex, error) {
	idx := &moduleIndex{dir: dir, files: map[string]string{}, builtin: map[string]bool{}}

	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		for _, ext := range moduleExts {
			if strings.HasSuffix(d.Name(), ext) {
				rel, err := filepath.Rel(dir, p)
				if err != nil {
					return err
				}

				idx.files[normalizeModName(strings.TrimSuffix(d.Name(), ext))] = filepath.ToSlash(rel)

				break
			}
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing modules: %w", err)
	}

	f, err := os.Open(filepath.Join(dir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("reading modules.builtin: %w", err)
	}
	defer f.Close() //nolint:errcheck

	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name := path.Base(strings.TrimSpace(sc.Text()))
		if name != "." && name != "" {
			idx.builtin[normalizeModName(strings.TrimSuffix(name, ".ko"))] = true
		}
	}

	return idx, sc.Err()
}

// module is one module file ready for the initramfs.
type module struct {
	name    string
	relPath string // uncompressed, relative to /lib/modules/<kver>
	data    []byte
	deps    []string // normalized names from .modinfo depends= and softdep pre:
}

// load reads and decompresses a module and its dependency list. The
// initramfs carries plain .ko files: the whole archive is compressed anyway
// and labos can hand them to finit_module without flags.
func (idx *moduleIndex) load(name string) (*module, error) {
	rel, ok := idx.files[name]
	if !ok {
		return nil, fmt.Errorf("module %s not found under %s", name, idx.dir)
	}

	raw, err := os.ReadFile(filepath.Join(idx.dir, rel))
	if err != nil {
		return nil, err
	}

	data, err := decompressModule(rel, raw)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}

	info, err := modinfo(data)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}

	m := &module{name: name, relPath: stripModExt(rel) + ".ko", data: data}

	for _, d := range strings.Split(info["depends"], ",") {
		if d = strings.TrimSpace(d); d != "" {
			m.deps = append(m.deps, normalizeModName(d))
		}
	}

	// softdep "pre:" modules are ones the module asks for by name at load
	// time; only real module names can be honoured (aliases need modprobe).
	pre := false

	for _, field := range strings.Fields(info["softdep"]) {
		switch field {
		case "pre:":
			pre = true
		case "post:":
			pre = false
		default:
			if n := normalizeModName(field); pre && idx.files[n] != "" && !idx.builtin[n] {
				m.deps = append(m.deps, n)
			}
		}
	}

	return m, nil
}

func stripModExt(rel string) string {
	for _, ext := range moduleExts {
		if strings.HasSuffix(rel, ext) {
			return strings.TrimSuffix(rel, ext)
		}
	}

	return rel
}

func decompressModule(rel string, raw []byte) ([]byte, error) {
	var (
		r   io.Reader
		err error
	)

	switch {
	case strings.HasSuffix(rel, ".xz"):
		r, err = xz.NewReader(bytes.NewReader(raw))
	case strings.HasSuffix(rel, ".zst"):
		var d *zstd.Decoder

		d, err = zstd.NewReader(bytes.NewReader(raw))
		if err == nil {
			defer d.Close()

			r = d
		}
	case strings.HasSuffix(rel, ".gz"):
		r, err = gzip.NewReader(bytes.NewReader(raw))
	default:
		return raw, nil
	}

	if err != nil {
		return nil, fmt.Errorf("decompressing: %w", err)
	}

	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("decompressing: %w", err)
	}

	return data, nil
}

// modinfo parses the .modinfo section (NUL-separated key=value pairs).
func modinfo(data []byte) (map[string]string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parsing ELF: %w", err)
	}

	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}

	raw, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo: %w", err)
	}

	info := map[string]string{}

	for _, kv := range bytes.Split(raw, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}

		if prev, seen := info[k]; seen {
			v = prev + " " + v
		}

		info[k] = v
	}

	return info, nil
}

// resolveModules returns the modules to load for the requested names,
// dependencies before dependents, plus the requested names that are built in.
func resolveModules(idx *moduleIndex, names []string) (order []*module, builtin []string, err error) {
	loaded := map[string]*module{}
	state := map[string]int{} // 1 visiting, 2 done

	var visit func(name string, chain []string) error

	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}

		state[name] = 1

		m, err := idx.load(name)
		if err != nil {
			return err
		}

		for _, d := range m.deps {
			if idx.builtin[d] {
				continue
			}

			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}

		state[name] = 2
		loaded[name] = m
		order = append(order, m)

		return nil
	}

	for _, n := range names {
		n = normalizeModName(n)
		if idx.builtin[n] {
			builtin = append(builtin, n)

			continue
		}

		if err := visit(n, nil); err != nil {
			return nil, nil, err
		}
	}

	sort.Strings(builtin)

	return order, builtin, nil
}

// modulesDep renders modules.dep for the included modules in depmod's format
// (all transitive dependencies; modprobe loads the list from the end).
func modulesDep(order []*module) []byte {
	byName := map[string]*module{}
	for _, m := range order {
		byName[m.name] = m
	}

	var buf bytes.Buffer

	for _, m := range order {
		var deps []string

		seen := map[string]bool{}

		var walk func(*module)

		walk = func(x *module) {
			for _, d := range x.deps {
				dm := byName[d]
				if dm == nil || seen[d] {
					continue
				}

				seen[d] = true
				walk(dm)
				deps = append(deps, dm.relPath)
			}
		}

		walk(m)

		// walk appended deepest first; modprobe wants nearest first.
		for i, j := 0, len(deps)-1; i < j; i, j = i+1, j-1 {
			deps[i], deps[j] = deps[j], deps[i]
		}

		fmt.Fprintf(&buf, "%s:", m.relPath)

		for _, d := range deps {
			fmt.Fprintf(&buf, " %s", d)
		}

		buf.WriteByte('\n')
	}

	return buf.Bytes()
}

func (b *builder) collectModules(context.Context) error {
	if b.opts.TrivialInit {
		return nil
	}

	idx, err := loadModuleIndex(b.assets.ModulesDir)
	if err != nil {
		return err
	}

	order, builtin, err := resolveModules(idx, b.opts.Modules)
	if err != nil {
		return err
	}

	base := path.Join("lib/modules", b.assets.KernelRelease)

	var list bytes.Buffer

	for _, m := range order {
		b.tree.file(path.Join(base, m.relPath), m.data, 0o644)
		fmt.Fprintf(&list, "/%s\n", path.Join(base, m.relPath))
		b.res.Modules = append(b.res.Modules, m.relPath)
	}

	b.tree.file(path.Join(base, "modules.dep"), modulesDep(order), 0o644)
	b.tree.file("etc/labos/modules", list.Bytes(), 0o644)

	for _, f := range []string{"modules.builtin", "modules.order"} {
		if data, err := os.ReadFile(filepath.Join(b.assets.ModulesDir, f)); err == nil {
			b.tree.file(path.Join(base, f), data, 0o644)
		}
	}

	b.res.Builtin = builtin
	b.log.Info("modules resolved", "load", len(order), "builtin", builtin)

	return nil
}
