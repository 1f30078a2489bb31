package addons

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Annotations written on each image in the cache's index.json. containerd
// (and so Talos's image cache) names an image by io.containerd.image.name.
const (
	AnnotationRefName       = "org.opencontainers.image.ref.name"
	AnnotationContainerName = "io.containerd.image.name"
)

// PinnedImage is an image to cache: its upstream reference and digest.
type PinnedImage struct {
	// Ref is the upstream reference with tag (quay.io/cilium/cilium:v1.18.0).
	Ref string `json:"ref"`
	// Digest is the manifest digest.
	Digest string `json:"digest"`
}

// CacheStats describes a written cache.
type CacheStats struct {
	// Images is how many images the cache holds.
	Images int `json:"images"`
	// Bytes is the size of the OCI layout on disk (blobs, index.json, oci-layout).
	Bytes int64 `json:"bytes"`
	// LayerBytes is the sum of every image's layer sizes, counting a layer
	// once per image that uses it.
	LayerBytes int64 `json:"layerBytes"`
	// DedupSavedBytes is what storing each layer once saved over LayerBytes.
	DedupSavedBytes int64 `json:"dedupSavedBytes"`
}

// BuildCache pulls every image by digest through the mirror and writes
// them into a fresh OCI image layout at dir (which must not exist or be
// empty). Blobs are stored once however many images share them. Images are
// appended in sorted order so the same set gives byte-identical files.
func BuildCache(ctx context.Context, dir string, images []PinnedImage, m Mirror, log *slog.Logger) (*CacheStats, error) {
	return BuildCacheWith(ctx, dir, images, nil, m, log)
}

// BuildCacheWith is BuildCache where the images in built (the project's own
// builds, keyed by their pin) are taken as given instead of pulled; they
// must still be in images, and each one's digest must equal its pin.
func BuildCacheWith(ctx context.Context, dir string, images []PinnedImage, built map[PinnedImage]v1.Image, m Mirror, log *slog.Logger) (*CacheStats, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("image cache %s: directory is not empty", dir)
	}

	uniq := map[PinnedImage]bool{}
	for _, img := range images {
		uniq[img] = true
	}

	sorted := make([]PinnedImage, 0, len(uniq))
	for img := range uniq {
		sorted = append(sorted, img)
	}

	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Ref != sorted[j].Ref {
			return sorted[i].Ref < sorted[j].Ref
		}

		return sorted[i].Digest < sorted[j].Digest
	})

	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("creating image cache: %w", err)
	}

	stats := &CacheStats{}
	layerSize := map[v1.Hash]int64{}

	for _, pi := range sorted {
		img, ok := built[pi]
		if !ok {
			src, err := m.ImageDigestRef(pi.Ref, pi.Digest)
			if err != nil {
				return nil, err
			}

			if img, err = remote.Image(src, remote.WithContext(ctx)); err != nil {
				return nil, fmt.Errorf("pulling %s (%s): %w", pi.Ref, src, err)
			}
		}

		got, err := img.Digest()
		if err != nil {
			return nil, fmt.Errorf("pulling %s: %w", pi.Ref, err)
		}

		// remote.Image resolves an index to its linux/amd64 child: then the
		// cache would hold something other than the pin.
		if got.String() != pi.Digest {
			return nil, fmt.Errorf("pulling %s: got manifest %s, pinned %s (pin the linux/amd64 image manifest, not an index)", pi.Ref, got, pi.Digest)
		}

		layers, err := img.Layers()
		if err != nil {
			return nil, fmt.Errorf("pulling %s: %w", pi.Ref, err)
		}

		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return nil, fmt.Errorf("pulling %s: %w", pi.Ref, err)
			}

			sz, err := l.Size()
			if err != nil {
				return nil, fmt.Errorf("pulling %s: %w", pi.Ref, err)
			}

			stats.LayerBytes += sz
			layerSize[d] = sz
		}

		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
			AnnotationRefName:       pi.Ref,
			AnnotationContainerName: pi.Ref,
		})); err != nil {
			return nil, fmt.Errorf("caching %s: %w", pi.Ref, err)
		}

		log.Debug("cached image", "ref", pi.Ref, "digest", pi.Digest, "layers", len(layers))
		stats.Images++
	}

	var unique int64
	for _, sz := range layerSize {
		unique += sz
	}

	stats.DedupSavedBytes = stats.LayerBytes - unique

	stats.Bytes, err = dirSize(dir)
	if err != nil {
		return nil, err
	}

	return stats, nil
}

func dirSize(dir string) (int64, error) {
	var total int64

	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}

			total += fi.Size()
		}

		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measuring image cache: %w", err)
	}

	return total, nil
}

// MissingImageError reports images referenced by a manifest that the cache
// does not hold; it names each manifest and image.
type MissingImageError struct {
	Missing []ImageUse
}

func (e *MissingImageError) Error() string {
	lines := make([]string, len(e.Missing))
	for i, u := range e.Missing {
		lines[i] = fmt.Sprintf("%s: %s container %q references %s, which is not in the image cache", u.Addon, u.Manifest, u.Container, u.Ref)
	}

	return strings.Join(lines, "\n")
}

// CheckCache fails, naming manifest and image, unless every referenced
// image is in the OCI layout at dir by digest with all its blobs present.
func CheckCache(dir string, uses []ImageUse) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		return fmt.Errorf("opening image cache: %w", err)
	}

	idx, err := p.ImageIndex()
	if err != nil {
		return fmt.Errorf("reading image cache index: %w", err)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("reading image cache index: %w", err)
	}

	present := map[string]bool{}

	for _, d := range im.Manifests {
		if complete(p, d.Digest) {
			present[d.Digest.String()] = true
		}
	}

	var missing []ImageUse

	for _, u := range uses {
		d, err := name.NewDigest(u.Ref)
		if err != nil || !present[d.DigestStr()] {
			missing = append(missing, u)
		}
	}

	if len(missing) > 0 {
		return &MissingImageError{Missing: missing}
	}

	return nil
}

// complete reports whether the image's manifest, config and layers are all
// present as blobs.
func complete(p layout.Path, h v1.Hash) bool {
	img, err := p.Image(h)
	if err != nil {
		return false
	}

	cfg, err := img.ConfigName()
	if err != nil || !blobExists(p, cfg) {
		return false
	}

	m, err := img.Manifest()
	if err != nil {
		return false
	}

	for _, l := range m.Layers {
		if !blobExists(p, l.Digest) {
			return false
		}
	}

	return true
}

func blobExists(p layout.Path, h v1.Hash) bool {
	_, err := os.Stat(filepath.Join(string(p), "blobs", h.Algorithm, h.Hex))

	return err == nil
}

// ErrUnpinned marks a rendered image reference that is not one of the
// add-on's pinned images.
var ErrUnpinned = errors.New("image is not pinned in addon.yaml")

// CheckPinned fails, naming manifest and image, for any reference in the
// rendered add-on that is not "ref@digest" of one of its pinned images.
func (r *Rendered) CheckPinned() error {
	pinned := map[string]bool{}
	for _, img := range r.Addon.Images {
		pinned[img.ImageRef()] = true
	}

	var errs []error

	for _, u := range r.Images {
		if !pinned[u.Ref] {
			errs = append(errs, fmt.Errorf("%s: %s container %q references %s: %w", u.Addon, u.Manifest, u.Container, u.Ref, ErrUnpinned))
		}
	}

	return errors.Join(errs...)
}
