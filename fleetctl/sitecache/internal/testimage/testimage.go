// Package testimage builds synthetic labos-like installer images for the
// site cache's tests and bench: one layer (an uncompressed tar, like the
// Talos installer's single layer) holding boot/vmlinuz and boot/initramfs,
// the initramfs being the concatenation of a few "Go binaries",
// optionally compressed. Releases differ the way real ones do: a patch
// release rebuilds one binary (all its bytes change, as a rebuilt Go binary's
// addresses shift), a kernel release replaces vmlinuz.
package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Release describes one image.
type Release struct {
	KernelSeed uint64
	KernelSize int
	// BinarySeeds: one seed per binary of the initramfs.
	BinarySeeds []uint64
	BinarySize  int
	// Compress compresses the initramfs (nil: stored plain).
	Compress func([]byte) ([]byte, error)
}

// Base returns a release of about total bytes: a kernel of a quarter and
// sixteen binaries sharing the rest (Talos's initramfs holds about this
// many Go programs and tools).
func Base(total int) Release {
	seeds := make([]uint64, 16)
	for i := range seeds {
		seeds[i] = uint64(i + 1)
	}

	return Release{KernelSeed: 1000, KernelSize: total / 4, BinarySeeds: seeds, BinarySize: total * 3 / 4 / 16}
}

// Patch returns r with binary i rebuilt.
func (r Release) Patch(i int) Release {
	r.BinarySeeds = append([]uint64{}, r.BinarySeeds...)
	r.BinarySeeds[i] += 100

	return r
}

// Kernel returns r with a new kernel.
func (r Release) Kernel() Release {
	r.KernelSeed++

	return r
}

// random bytes: a compressed kernel.
func random(seed uint64, n int) []byte {
	g := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)

	for i := 0; i+8 <= n; i += 8 {
		v := g.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}

	return b
}

// binary bytes: compressible about 2:1 like a Go binary (code and tables
// with repeats).
func binary(seed uint64, n int) []byte {
	g := rand.New(rand.NewPCG(seed, 0xb1))
	words := make([][]byte, 256)

	for i := range words {
		words[i] = random(seed*1000+uint64(i), 4+g.IntN(28))
	}

	var b bytes.Buffer
	for b.Len() < n {
		if g.IntN(3) == 0 {
			b.Write(random(g.Uint64(), 16))
		} else {
			b.Write(words[g.IntN(len(words))])
		}
	}

	return b.Bytes()[:n]
}

// Initramfs returns the release's initramfs as stored in the image.
func (r Release) Initramfs() ([]byte, error) {
	var raw bytes.Buffer
	for _, s := range r.BinarySeeds {
		raw.Write(binary(s, r.BinarySize))
	}

	if r.Compress == nil {
		return raw.Bytes(), nil
	}

	return r.Compress(raw.Bytes())
}

// Layer returns the layer tar.
func (r Release) Layer() ([]byte, error) {
	initrd, err := r.Initramfs()
	if err != nil {
		return nil, fmt.Errorf("compressing initramfs: %w", err)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)

	for _, f := range []struct {
		name string
		data []byte
	}{{"boot/vmlinuz", random(r.KernelSeed, r.KernelSize)}, {"boot/initramfs", initrd}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}

		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}

	if err := tw.Close(); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}

// Image returns the release as an OCI image.
func (r Release) Image() (v1.Image, error) {
	l, err := r.Layer()
	if err != nil {
		return nil, err
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)

	return mutate.AppendLayers(img, static.NewLayer(l, types.OCIUncompressedLayer))
}

// ReadAll reads an image the way a node pulling it does: its config and
// every layer to its end (go-containerregistry checks each blob's digest
// as it reads), so a corrupt or missing blob is an error.
func ReadAll(img v1.Image) error {
	if _, err := img.RawConfigFile(); err != nil {
		return err
	}

	ls, err := img.Layers()
	if err != nil {
		return err
	}

	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}

		_, err = io.Copy(io.Discard, rc)
		rc.Close() //nolint:errcheck

		if err != nil {
			return err
		}
	}

	return nil
}
