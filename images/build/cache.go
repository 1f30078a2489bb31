package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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

	old := final + ".old"
	os.RemoveAll(old) //nolint:errcheck

	if _, err := os.Stat(final); err == nil {
		if err := os.Rename(final, old); err != nil {
			return fmt.Errorf("moving previous outputs aside: %w", err)
		}
	}

	if err := os.Rename(b.stage, final); err != nil {
		os.Rename(old, final) //nolint:errcheck

		return fmt.Errorf("moving outputs into place: %w", err)
	}

	return os.RemoveAll(old)
}
