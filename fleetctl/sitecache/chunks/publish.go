package chunks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types of the published index artifact. The artifact is a plain OCI
// image manifest whose config media type names it (the ORAS/"artifact"
// convention every OCI 1.0 registry stores), with one layer: the index JSON.
const (
	ArtifactType   types.MediaType = "application/vnd.labfleet.chunkindex.config.v1+json"
	IndexMediaType types.MediaType = "application/vnd.labfleet.chunkindex.v1+json"
)

// ErrNoIndex means no chunk index is published for a blob; the site cache
// then fetches the whole blob.
var ErrNoIndex = errors.New("no chunk index published")

// IndexTag is the tag, in the image's own repository, of the chunk index of
// one layer blob: "sha256-<hex>.chunks", derived from the blob digest the
// way cosign names signatures ("sha256-<hex>.sig"). A tag rather than an
// OCI 1.1 referrer: a referrer's subject must be a manifest, while the site
// cache asks about a blob, and not every registry serves the referrers API;
// a tag works on every registry Talos can pull from.
func IndexTag(blob string) string {
	return strings.Replace(blob, ":", "-", 1) + ".chunks"
}

// Published describes one index pushed by Publish.
type Published struct {
	Blob   string `json:"blob"`
	Size   int64  `json:"size"`
	Chunks int    `json:"chunks"`
	Tag    string `json:"tag"`
	// Reused is true when an index for the blob was already published.
	Reused bool `json:"reused"`
}

// Publish computes the chunk index of every layer blob of the image ref
// (which must already be pushed) and pushes each as an artifact tagged
// IndexTag(blob) in ref's repository. Layers that already have an index
// are skipped.
func Publish(ctx context.Context, ref name.Reference, opts ...remote.Option) ([]Published, error) {
	opts = append(opts, remote.WithContext(ctx))

	img, err := remote.Image(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("reading image %s: %w", ref, err)
	}

	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("reading layers of %s: %w", ref, err)
	}

	var out []Published

	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, fmt.Errorf("reading layers of %s: %w", ref, err)
		}

		tag := ref.Context().Tag(IndexTag(d.String()))

		if x, err := FetchIndex(ctx, ref.Context(), d.String(), opts...); err == nil {
			out = append(out, Published{Blob: d.String(), Size: x.Size, Chunks: len(x.Chunks), Tag: tag.String(), Reused: true})

			continue
		} else if !errors.Is(err, ErrNoIndex) {
			return nil, err
		}

		rc, err := l.Compressed() // the blob as stored: what a node pulls
		if err != nil {
			return nil, fmt.Errorf("reading layer %s: %w", d, err)
		}

		x, err := Split(rc, d.String())
		rc.Close() //nolint:errcheck

		if err != nil {
			return nil, err
		}

		art := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), ArtifactType)

		art, err = mutate.Append(art, mutate.Addendum{
			Layer:       static.NewLayer(x.Encode(), IndexMediaType),
			Annotations: map[string]string{"dev.labfleet.chunkindex.blob": d.String()},
		})
		if err != nil {
			return nil, fmt.Errorf("building chunk index artifact of %s: %w", d, err)
		}

		if err := remote.Write(tag, art, opts...); err != nil {
			return nil, fmt.Errorf("pushing chunk index %s: %w", tag, err)
		}

		out = append(out, Published{Blob: d.String(), Size: x.Size, Chunks: len(x.Chunks), Tag: tag.String()})
	}

	return out, nil
}

// FetchIndex reads the published chunk index of blob from repo. The index is
// not trusted: every chunk it names is checked against its digest, and the
// rebuilt blob against blob.
func FetchIndex(ctx context.Context, repo name.Repository, blob string, opts ...remote.Option) (*Index, error) {
	opts = append(opts, remote.WithContext(ctx))

	art, err := remote.Image(repo.Tag(IndexTag(blob)), opts...)
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("chunk index of %s in %s: %w", blob, repo, ErrNoIndex)
		}

		return nil, fmt.Errorf("reading chunk index of %s in %s: %w", blob, repo, err)
	}

	layers, err := art.Layers()
	if err != nil || len(layers) != 1 {
		return nil, fmt.Errorf("chunk index of %s in %s: want one layer (%v)", blob, repo, err)
	}

	if mt, _ := layers[0].MediaType(); mt != IndexMediaType {
		return nil, fmt.Errorf("chunk index of %s in %s: layer media type %q, want %q", blob, repo, mt, IndexMediaType)
	}

	rc, err := layers[0].Compressed() // ggcr checks the layer's digest while reading
	if err != nil {
		return nil, fmt.Errorf("reading chunk index of %s: %w", blob, err)
	}
	defer rc.Close()

	data, err := io.ReadAll(io.LimitReader(rc, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading chunk index of %s: %w", blob, err)
	}

	return Decode(data, blob)
}
