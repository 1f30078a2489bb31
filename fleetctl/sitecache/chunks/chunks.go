// Package chunks cuts image layer blobs into content-defined chunks (the
// technique of casync/desync, with restic's Rabin-fingerprint chunker), so
// that two releases of an image share every chunk whose bytes did not
// change even when data before it grew or shrank. A chunk index lists a
// blob's chunks in order (sha256, offset, size); a site cache holding the
// index of a new blob fetches only the chunks it holds in no other blob and
// rebuilds the blob byte for byte.
package chunks

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/restic/chunker"
)

// IndexVersion is the version of the chunk index format.
const IndexVersion = "labfleet.dev/chunkindex/v1"

// Pol is the irreducible polynomial of the rolling hash. It is fixed: the
// publisher and every site cache must cut at the same places, or no chunk
// would ever match. (It is the polynomial of restic's own tests.)
const Pol = chunker.Pol(0x3DA3358B4DC173)

// Chunk bounds. Smaller than restic's defaults (512 KiB..8 MiB, 1 MiB
// average) because a patch release changes one binary of a few MiB: the
// chunks cut across the start and the end of a change are re-sent whole,
// so the average size is roughly the waste per change (about 2 x 128 KiB).
// The index costs ~100 bytes per chunk (0.1% of the blob at this size),
// and contiguous missing chunks travel in one range request, so smaller
// chunks do not cost round trips on a 100 ms link.
const (
	MinSize     = 32 << 10
	MaxSize     = 512 << 10
	AverageBits = 17 // 128 KiB average
)

// Chunk is one piece of a blob.
type Chunk struct {
	// Digest is "sha256:<hex>" of the chunk's bytes.
	Digest string `json:"digest"`
	// Offset is where the chunk starts in the blob.
	Offset int64 `json:"offset"`
	// Size is its length in bytes.
	Size int64 `json:"size"`
}

// Index is the chunk list of one blob.
type Index struct {
	// Version must be IndexVersion.
	Version string `json:"version"`
	// Blob is the digest of the whole blob ("sha256:<hex>").
	Blob string `json:"blob"`
	// Size is the blob's length.
	Size int64 `json:"size"`
	// Polynomial, MinSize, MaxSize and AverageBits record how it was cut.
	Polynomial  string  `json:"polynomial"`
	MinSize     int     `json:"minSize"`
	MaxSize     int     `json:"maxSize"`
	AverageBits int     `json:"averageBits"`
	Chunks      []Chunk `json:"chunks"`
}

// Split reads r to its end and returns its index; blob is r's expected
// digest, which Split checks.
func Split(r io.Reader, blob string) (*Index, error) {
	c := chunker.NewWithBoundaries(r, Pol, MinSize, MaxSize)
	c.SetAverageBits(AverageBits)

	idx := &Index{
		Version: IndexVersion, Blob: blob, Polynomial: Pol.String(),
		MinSize: MinSize, MaxSize: MaxSize, AverageBits: AverageBits,
	}

	whole := sha256.New()
	buf := make([]byte, MaxSize)

	for {
		ch, err := c.Next(buf)
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("chunking %s: %w", blob, err)
		}

		whole.Write(ch.Data)
		idx.Chunks = append(idx.Chunks, Chunk{Digest: Digest(ch.Data), Offset: idx.Size, Size: int64(ch.Length)})
		idx.Size += int64(ch.Length)
	}

	if got := "sha256:" + hex.EncodeToString(whole.Sum(nil)); got != blob {
		return nil, fmt.Errorf("chunking %s: content has digest %s", blob, got)
	}

	return idx, nil
}

// Digest is "sha256:<hex>" of b.
func Digest(b []byte) string {
	s := sha256.Sum256(b)

	return "sha256:" + hex.EncodeToString(s[:])
}

// Validate checks that the index is one this code can rebuild from: same
// chunking parameters, chunks contiguous from 0 to Size. A publisher with
// other parameters would produce chunks that never match ours.
func (x *Index) Validate() error {
	switch {
	case x.Version != IndexVersion:
		return fmt.Errorf("chunk index of %s: version %q, want %q", x.Blob, x.Version, IndexVersion)
	case x.Polynomial != Pol.String() || x.MinSize != MinSize || x.MaxSize != MaxSize || x.AverageBits != AverageBits:
		return fmt.Errorf("chunk index of %s: chunking parameters differ from this fleetctl's (republish it with fleetctl site-cache index)", x.Blob)
	}

	var off int64

	for i, c := range x.Chunks {
		if c.Offset != off || c.Size <= 0 || c.Size > MaxSize {
			return fmt.Errorf("chunk index of %s: chunk %d (%s): offset %d size %d do not follow the previous chunk", x.Blob, i, c.Digest, c.Offset, c.Size)
		}

		off += c.Size
	}

	if off != x.Size {
		return fmt.Errorf("chunk index of %s: chunks cover %d bytes, blob has %d", x.Blob, off, x.Size)
	}

	return nil
}

// Decode parses and validates an index; want is the blob it must describe.
func Decode(data []byte, want string) (*Index, error) {
	var x Index
	if err := json.Unmarshal(data, &x); err != nil {
		return nil, fmt.Errorf("decoding chunk index of %s: %w", want, err)
	}

	if x.Blob != want {
		return nil, fmt.Errorf("chunk index for %s describes %s", want, x.Blob)
	}

	if err := x.Validate(); err != nil {
		return nil, err
	}

	return &x, nil
}

// Encode is the canonical JSON form.
func (x *Index) Encode() []byte {
	b, _ := json.Marshal(x) //nolint:errchkjson // plain strings and ints

	return b
}
