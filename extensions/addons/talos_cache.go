package addons

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// WriteTalosCache writes the images of the OCI layout at ociDir into dst in
// the on-disk form Talos's image cache registry reads from its IMAGECACHE
// volume: blob/sha256-<hex> for every blob, and the manifest bytes under
// manifests/<name>/digest/sha256-<hex> and manifests/<name>/reference/<tag>,
// <name> being the reference's full name (quay.io/cilium/cilium). Image names
// come from the layout's io.containerd.image.name annotations.
func WriteTalosCache(ociDir, dst string) error {
	p, err := layout.FromPath(ociDir)
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

	for _, d := range im.Manifests {
		refName := d.Annotations[AnnotationContainerName]

		tag, err := name.NewTag(refName)
		if err != nil {
			return fmt.Errorf("image cache entry %s: name %q: %w", d.Digest, refName, err)
		}

		img, err := p.Image(d.Digest)
		if err != nil {
			return fmt.Errorf("image cache entry %s: %w", refName, err)
		}

		raw, err := img.RawManifest()
		if err != nil {
			return fmt.Errorf("image cache entry %s: %w", refName, err)
		}

		m, err := img.Manifest()
		if err != nil {
			return fmt.Errorf("image cache entry %s: %w", refName, err)
		}

		blobs := []v1.Hash{m.Config.Digest}
		for _, l := range m.Layers {
			blobs = append(blobs, l.Digest)
		}

		for _, h := range blobs {
			if err := copyBlob(p, h, filepath.Join(dst, "blob", talosDigest(h))); err != nil {
				return fmt.Errorf("image cache entry %s: %w", refName, err)
			}
		}

		// Docker Hub names are canonical as docker.io/..., as Talos parses them.
		repo := tag.Context().Name()
		if reg := tag.Context().RegistryStr(); reg == name.DefaultRegistry {
			repo = "docker.io/" + tag.Context().RepositoryStr()
		}

		mdir := filepath.Join(dst, "manifests", filepath.FromSlash(repo))

		for _, f := range []string{filepath.Join(mdir, "digest", talosDigest(d.Digest)), filepath.Join(mdir, "reference", tag.TagStr())} {
			if err := writeFile(f, raw); err != nil {
				return fmt.Errorf("image cache entry %s: %w", refName, err)
			}
		}
	}

	return nil
}

func talosDigest(h v1.Hash) string {
	return strings.Replace(h.String(), "sha256:", "sha256-", 1)
}

func copyBlob(p layout.Path, h v1.Hash, dst string) error {
	if _, err := os.Stat(dst); err == nil {
		return nil
	}

	b, err := p.Bytes(h)
	if err != nil {
		return err
	}

	return writeFile(dst, b)
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}

	return os.WriteFile(path, b, 0o644)
}
