package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

func installerOutput(digest, ref string) record.Output {
	return record.Output{Kind: "installer", Path: "installer", SHA256: strings.TrimPrefix(digest, "sha256:"), Ref: ref}
}

// cacheKey hashes everything a build reads: the builder version, the
// definition, the base digest, the keys, the baker's inputs and the epoch.
// It is cheap (no rendering, no extraction) so a no-op rebuild is fast.
func (b *builder) cacheKey(ctx context.Context) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%d\n", Version, b.epoch)

	defID, err := b.def.ID()
	if err != nil {
		return "", err
	}

	fmt.Fprintf(h, "def %s\n", defID)

	// Add-ons first: a definition problem is reported before any network access.
	fp, err := b.opts.Baker.Fingerprint(b.def)
	if errors.Is(err, fs.ErrNotExist) {
		// An add-on without a folder is a definition problem, not a failure.
		return "", &spec.FieldError{Field: "addons", Msg: fmt.Sprintf("%v (known add-ons are the folders of extensions/)", err)}
	}

	if err != nil {
		return "", fmt.Errorf("fingerprinting add-ons: %w", err)
	}

	fmt.Fprintf(h, "bake %s\n", fp)

	_, img, err := base.Describe(ctx, b.baseSource())
	if err != nil {
		return "", err
	}

	digest, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("computing base digest: %w", err)
	}

	fmt.Fprintf(h, "base %s\n", digest)

	ibKey, err := b.installerBaseKey(ctx)
	if err != nil {
		return "", err
	}

	fmt.Fprint(h, ibKey)

	for _, p := range keyFiles(b.keys) {
		sum, _, err := hashFile(p)
		if err != nil {
			return "", err
		}

		fmt.Fprintf(h, "key %s %s\n", filepath.Base(p), sum)
	}

	// The builder's code is an input too: a new Talos imager or go-uefi can
	// change the output for the same definition.
	fmt.Fprint(h, builderModules())

	tools, err := b.hostTools()
	if err != nil {
		return "", err
	}

	fmt.Fprint(h, tools)

	return hex.EncodeToString(h.Sum(nil)), nil
}

// fromCache serves a build whose key matches the record in dir, after
// checking every output still holds what was built (verifyOutputs).
func (b *builder) fromCache(key, dir string) (*record.Record, bool) {
	rec, err := record.Load(filepath.Join(dir, record.FileName))
	if err != nil || rec.CacheKey != key {
		return nil, false
	}

	seen, err := verifyOutputs(dir, rec)
	if err != nil {
		b.opts.Logger.Info("not reusing outputs", "dir", dir, "reason", err)

		return nil, false
	}

	if seen != nil {
		writeStamps(dir, key, seen) //nolint:errcheck // stamps only save the next check a hash
	}

	rec.Cached = true

	return rec, true
}

// cacheEntries is how many finished builds the cache keeps.
const cacheEntries = 8

// restoreFromCache puts a build kept in the cache (CacheDir/<key>) back into
// the output folder: switching between definitions or versions that were
// built before costs a copy (a reflink where the file system has them), not
// a build.
func (b *builder) restoreFromCache(key, final string) (*record.Record, bool) {
	src := filepath.Join(b.opts.CacheDir, key)

	rec, err := record.Load(filepath.Join(src, record.FileName))
	if err != nil || rec.CacheKey != key {
		return nil, false
	}

	stage, err := newScratch(b.opts.OutDir, "."+b.def.Name+".restoring-")
	if err != nil {
		return nil, false
	}
	defer stage.Close()

	if err := copyTree(src, stage.Dir); err != nil {
		return nil, false
	}

	// The copy is checked, not the entry: it becomes the output only when it
	// holds what the record names, whatever happened to the cache folder.
	seen, err := verifyByContent(stage.Dir, rec)
	if err != nil {
		b.opts.Logger.Info("not restoring from the cache", "dir", src, "reason", err)

		return nil, false
	}

	if err := swapInto(stage.Dir, final); err != nil {
		return nil, false
	}

	writeStamps(final, key, seen) //nolint:errcheck // stamps only save the next check a hash

	now := time.Now()
	os.Chtimes(src, now, now) //nolint:errcheck // marks the entry recently used

	rec.Cached = true

	return rec, true
}

// keep copies a finished build into the cache and evicts the oldest entries.
// The cache is an optimisation: failures here never fail the build.
func (b *builder) keep(key, final string) {
	dst := filepath.Join(b.opts.CacheDir, key)
	if _, err := os.Stat(dst); err == nil {
		return
	}

	if err := os.MkdirAll(b.opts.CacheDir, 0o755); err != nil {
		return
	}

	tmp, err := newScratch(b.opts.CacheDir, ".incoming-")
	if err != nil {
		return
	}
	defer tmp.Close()

	// No stamps in the cache: a restore hashes the copy it makes anyway.
	if err := copyTree(final, tmp.Dir); err != nil || os.Rename(tmp.Dir, dst) != nil {
		return
	}

	entries, err := os.ReadDir(b.opts.CacheDir)
	if err != nil {
		return
	}

	type aged struct {
		name string
		mod  time.Time
	}

	var all []aged

	for _, e := range entries {
		if info, err := e.Info(); err == nil && e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			all = append(all, aged{e.Name(), info.ModTime()})
		}
	}

	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })

	for _, a := range all[min(len(all), cacheEntries):] {
		os.RemoveAll(filepath.Join(b.opts.CacheDir, a.name)) //nolint:errcheck
	}
}

// copyTree recreates src under dst with copies that share no inode with src:
// outputs are used in place (a VM booted on _out/<name>/disk.raw writes to
// it), and that must never reach the cache. Each file is a reflink where the
// file system supports it (btrfs, XFS: instant, copy-on-write), else a copy.
// The stamps file is not copied; it describes the inodes of its own folder.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}

		target := filepath.Join(dst, rel)

		switch {
		case de.IsDir():
			return os.MkdirAll(target, 0o755)
		case rel == StampsFile:
			return nil
		default:
			return cloneFile(p, target)
		}
	})
}

// cloneFile copies src to a new file dst, by FICLONE when possible.
func cloneFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	defer in.Close() //nolint:errcheck

	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}

	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}

	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if err := copySparse(out, in, st.Size()); err != nil {
			out.Close() //nolint:errcheck

			return fmt.Errorf("copying to %s: %w", dst, err)
		}
	}

	if err := out.Close(); err != nil {
		return fmt.Errorf("copying to %s: %w", dst, err)
	}

	return nil
}

// commit writes the record and swaps the staged folder into place; the
// previous outputs are removed only after the new ones are in place.
func (b *builder) commit(ctx context.Context, final string) error {
	// Timings stay in memory (Result): build.json is byte-identical
	// across builds of the same inputs.
	stored := *b.rec
	stored.Steps = nil

	data, err := stored.Marshal()
	if err != nil {
		return err
	}

	if err := os.WriteFile(filepath.Join(b.stage, record.FileName), data, 0o644); err != nil {
		return fmt.Errorf("writing build record: %w", err)
	}

	if err := swapInto(b.stage, final); err != nil {
		return err
	}

	// Stamped after the move: the stamps name the inodes the outputs have now.
	writeStamps(final, b.rec.CacheKey, b.written) //nolint:errcheck // without stamps the next check hashes

	// The cache copy is an optimisation: Ctrl-C skips it.
	if ctx.Err() == nil {
		b.keep(b.rec.CacheKey, final)
	}

	return nil
}

// swapInto moves stage to final, keeping the previous final until the new one is in place.
func swapInto(stage, final string) error {
	old := final + ".old"
	os.RemoveAll(old) //nolint:errcheck

	if _, err := os.Stat(final); err == nil {
		if err := os.Rename(final, old); err != nil {
			return fmt.Errorf("moving previous outputs aside: %w", err)
		}
	}

	if err := os.Rename(stage, final); err != nil {
		os.Rename(old, final) //nolint:errcheck

		return fmt.Errorf("moving outputs into place: %w", err)
	}

	return os.RemoveAll(old)
}

// builderModules lists the main module and every dependency compiled into
// this binary with its version and go.sum hash (a replaced module by its
// replacement). A binary without build information hashes as such.
func builderModules() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "modules unknown\n"
	}

	return modulesOf(bi)
}

func modulesOf(bi *debug.BuildInfo) string {
	var sb strings.Builder

	fmt.Fprintf(&sb, "go %s\nmain %s %s\n", bi.GoVersion, bi.Main.Path, bi.Main.Version)

	for _, s := range bi.Settings {
		// A development build's version is "(devel)": its VCS revision says more.
		if s.Key == "vcs.revision" || s.Key == "vcs.modified" {
			fmt.Fprintf(&sb, "%s %s\n", s.Key, s.Value)
		}
	}

	for _, d := range bi.Deps {
		fmt.Fprintf(&sb, "dep %s %s %s\n", d.Path, d.Version, d.Sum)

		if r := d.Replace; r != nil {
			fmt.Fprintf(&sb, "  => %s %s %s\n", r.Path, r.Version, r.Sum)
		}
	}

	return sb.String()
}

// HostTools are the programs the Talos imager runs during a build.
var HostTools = []string{"cpio", "mksquashfs", "xz", "zstd"}

// hostTools names each host tool the build would run, resolved the way the
// imager resolves it (ToolsPath first), by the sha256 of its binary: a
// version string can stay the same across rebuilt packages, the bytes cannot.
// A tool that is missing hashes as missing; the step that needs it says so.
func (b *builder) hostTools() (string, error) {
	path := os.Getenv("PATH")
	if b.opts.ToolsPath != "" {
		path = b.opts.ToolsPath + string(os.PathListSeparator) + path
	}

	var sb strings.Builder

	for _, t := range HostTools {
		p := lookPathIn(t, path)
		if p == "" {
			fmt.Fprintf(&sb, "tool %s missing\n", t)

			continue
		}

		sum, _, err := hashFile(p)
		if err != nil {
			return "", fmt.Errorf("fingerprinting host tool %s: %w", t, err)
		}

		fmt.Fprintf(&sb, "tool %s %s\n", t, sum)
	}

	return sb.String(), nil
}

func lookPathIn(name, path string) string {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}

		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}

	return ""
}

// copySparse copies only the data regions of in (SEEK_DATA/SEEK_HOLE) and
// keeps the holes: disk.raw is mostly holes, and a dense copy would cost its
// full size in every cache entry.
func copySparse(out, in *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}

	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}

		if err != nil {
			// No SEEK_DATA on this file system: a plain copy.
			_, err := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, size-off))

			return err
		}

		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}

		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return err
		}

		off = hole
	}

	return nil
}
