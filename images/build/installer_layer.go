package build

import (
	"bufio"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/siderolabs/talos/pkg/imager/filemap"
)

// artifactsLayer writes Talos's installer artifacts layer for files into
// dir/<sha256 of the compressed layer>: the tar Talos's filemap.Build makes
// (entries sorted by image path, as filemap.Layer sorts them) gzipped at
// BestSpeed, as filemap.Layer does, so the bytes are the ones Talos's imager
// would write. Unlike filemap.Layer + go-containerregistry, which compress
// once and then read the file twice more for the digest and (gunzipping) the
// diff ID, the tar is read once and both hashes and the size are taken on the
// way. dir is the layout's blobs/sha256 folder, so writing the layout later
// finds the blob in place and copies nothing.
func artifactsLayer(ctx context.Context, dir string, files []filemap.File) (v1.Layer, error) {
	files = slices.Clone(files)
	slices.SortFunc(files, func(a, b filemap.File) int { return cmp.Compare(a.ImagePath, b.ImagePath) })

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating installer blobs folder: %w", err)
	}

	tmp, err := os.CreateTemp(dir, ".layer-*")
	if err != nil {
		return nil, fmt.Errorf("creating installer layer: %w", err)
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename

	l, err := writeArtifacts(ctx, tmp, files)
	if cerr := tmp.Close(); err == nil && cerr != nil {
		err = cerr
	}

	if err != nil {
		return nil, fmt.Errorf("writing installer layer: %w", err)
	}

	l.path = filepath.Join(dir, l.digest.Hex)
	if err := os.Rename(tmp.Name(), l.path); err != nil {
		return nil, fmt.Errorf("writing installer layer: %w", err)
	}

	return l, nil
}

func writeArtifacts(ctx context.Context, out io.Writer, files []filemap.File) (*fileLayer, error) {
	tr := filemap.Build(files)
	defer tr.Close() //nolint:errcheck

	compressed := &hashCounter{h: sha256.New()}
	uncompressed := sha256.New()

	// filemap.Layer's buffer size and level: the gzip stream is the same.
	bw := bufio.NewWriterSize(io.MultiWriter(out, compressed), 2<<16)

	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}

	if _, err := io.Copy(io.MultiWriter(zw, uncompressed), ctxReader{ctx: ctx, r: tr}); err != nil {
		return nil, err
	}

	if err := zw.Close(); err != nil {
		return nil, err
	}

	if err := bw.Flush(); err != nil {
		return nil, err
	}

	return &fileLayer{
		digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(compressed.h.Sum(nil))},
		diffID: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(uncompressed.Sum(nil))},
		size:   compressed.n,
	}, nil
}

type hashCounter struct {
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(p []byte) (int, error) {
	c.n += int64(len(p))

	return c.h.Write(p)
}

// fileLayer is a gzip layer in a file whose digests are already known.
type fileLayer struct {
	path           string
	digest, diffID v1.Hash
	size           int64
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return types.OCILayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return gunzipFile(l.path) }

// gunzipFile opens a gzip file for reading its contents.
func gunzipFile(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}

	zr, err := gzip.NewReader(bufio.NewReader(f))
	if err != nil {
		f.Close() //nolint:errcheck

		return nil, err
	}

	return struct {
		io.Reader
		io.Closer
	}{zr, closers{zr, f}}, nil
}

type closers []io.Closer

func (cs closers) Close() error {
	var first error

	for _, c := range cs {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}

	return first
}
