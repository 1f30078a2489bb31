package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/record"
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

	_, img, err := base.Describe(ctx, b.baseSource())
	if err != nil {
		return "", err
	}

	digest, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("computing base digest: %w", err)
	}

	fmt.Fprintf(h, "base %s\n", digest)

	for _, p := range keyFiles(b.keys) {
		sum, _, err := hashFile(p)
		if err != nil {
			return "", err
		}

		fmt.Fprintf(h, "key %s %s\n", filepath.Base(p), sum)
	}

	fp, err := b.opts.Baker.Fingerprint(b.def)
	if err != nil {
		return "", fmt.Errorf("fingerprinting add-ons: %w", err)
	}

	fmt.Fprintf(h, "bake %s\n", fp)

	return hex.EncodeToString(h.Sum(nil)), nil
}

// fromCache serves a build whose key matches the record in the output
// folder, after checking every output is still there with its size.
func (b *builder) fromCache(key, dir string) (*record.Record, bool) {
	rec, err := record.Load(filepath.Join(dir, record.FileName))
	if err != nil || rec.CacheKey != key {
		return nil, false
	}

	for _, o := range rec.Outputs {
		st, err := os.Stat(filepath.Join(dir, o.Path))
		if err != nil || (!st.IsDir() && st.Size() != o.Size) {
			return nil, false
		}
	}

	rec.Cached = true

	return rec, true
}

// cacheEntries is how many finished builds the cache keeps.
const cacheEntries = 8

// restoreFromCache puts a build kept in the cache (CacheDir/<key>) back into
// the output folder: switching between definitions or versions that were
// built before costs hard links, not a build.
func (b *builder) restoreFromCache(key, final string) (*record.Record, bool) {
	src := filepath.Join(b.opts.CacheDir, key)

	rec, ok := b.fromCache(key, src)
	if !ok {
		return nil, false
	}

	stage, err := os.MkdirTemp(b.opts.OutDir, "."+b.def.Name+".restoring-")
	if err != nil {
		return nil, false
	}

	if err := linkTree(src, stage); err != nil {
		os.RemoveAll(stage) //nolint:errcheck

		return nil, false
	}

	if err := swapInto(stage, final); err != nil {
		os.RemoveAll(stage) //nolint:errcheck

		return nil, false
	}

	now := time.Now()
	os.Chtimes(src, now, now) //nolint:errcheck // marks the entry recently used

	return rec, true
}

// keep links a finished build into the cache and evicts the oldest entries.
// The cache is an optimisation: failures here never fail the build.
func (b *builder) keep(key, final string) {
	dst := filepath.Join(b.opts.CacheDir, key)
	if _, err := os.Stat(dst); err == nil {
		return
	}

	if err := os.MkdirAll(b.opts.CacheDir, 0o755); err != nil {
		return
	}

	tmp, err := os.MkdirTemp(b.opts.CacheDir, ".incoming-")
	if err != nil {
		return
	}

	if err := linkTree(final, tmp); err != nil || os.Rename(tmp, dst) != nil {
		os.RemoveAll(tmp) //nolint:errcheck

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

// linkTree recreates src under dst with hard links (a copy where links are
// not possible, e.g. across file systems). Outputs are never modified in
// place (the lab boots qcow2 overlays), so sharing inodes is safe.
func linkTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}

		target := filepath.Join(dst, rel)

		if de.IsDir() {
			return os.MkdirAll(target, 0o755)
		}

		if err := os.Link(p, target); err != nil {
			return copyFile(p, target)
		}

		return nil
	})
}

// commit writes the record and swaps the staged folder into place; the
// previous outputs are removed only after the new ones are in place.
func (b *builder) commit(final string) error {
	data, err := b.rec.Marshal()
	if err != nil {
		return err
	}

	if err := os.WriteFile(filepath.Join(b.stage, record.FileName), data, 0o644); err != nil {
		return fmt.Errorf("writing build record: %w", err)
	}

	if err := swapInto(b.stage, final); err != nil {
		return err
	}

	b.keep(b.rec.CacheKey, final)

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
