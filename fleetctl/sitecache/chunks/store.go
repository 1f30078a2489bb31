package chunks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/labfleet/labfleet/fleetctl/sitecache/fsutil"
)

// ErrCorruptChunk is returned when received or stored bytes do not match
// the chunk's digest; the error text names the chunk and its blob.
var ErrCorruptChunk = errors.New("chunk digest mismatch")

// ErrBlobMismatch is returned when a blob rebuilt from verified chunks
// still has another digest than the one asked for: the index lied.
var ErrBlobMismatch = errors.New("rebuilt blob digest mismatch")

// Store knows every chunk a site cache holds: loose chunks received for a
// blob not yet complete (DIR/chunks/sha256/HEX, kept across restarts so an
// interrupted transfer resumes without re-sending them) and the chunks of
// every complete blob it holds (found through DIR/indexes/sha256/HEX.json,
// read from the blob itself, so no byte is stored twice).
type Store struct {
	dir      string
	blobPath func(digest string) string

	mu  sync.Mutex
	loc map[string]location
	idx map[string]*Index // the index of every complete blob held
}

type location struct {
	blob      string // "" for a loose chunk
	off, size int64
}

// OpenStore opens (creating) the chunk store in dir. blobPath maps a blob
// digest to the file of a complete blob.
func OpenStore(dir string, blobPath func(digest string) string) (*Store, error) {
	s := &Store{dir: dir, blobPath: blobPath, loc: map[string]location{}, idx: map[string]*Index{}}

	for _, sub := range []string{"chunks/sha256", "indexes/sha256"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("creating chunk store: %w", err)
		}
	}

	idxs, err := os.ReadDir(filepath.Join(dir, "indexes/sha256"))
	if err != nil {
		return nil, fmt.Errorf("reading chunk indexes: %w", err)
	}

	for _, e := range idxs {
		hexd, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue // a temporary file left by a crash
		}

		data, err := os.ReadFile(filepath.Join(dir, "indexes/sha256", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading chunk index: %w", err)
		}

		x, err := Decode(data, "sha256:"+hexd)
		if err != nil {
			return nil, err
		}

		if _, err := os.Stat(blobPath(x.Blob)); err != nil {
			continue // the blob was removed; its index is stale
		}

		s.register(x)
	}

	loose, err := os.ReadDir(filepath.Join(dir, "chunks/sha256"))
	if err != nil {
		return nil, fmt.Errorf("reading loose chunks: %w", err)
	}

	for _, e := range loose {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}

		if info, err := e.Info(); err == nil {
			s.loc["sha256:"+e.Name()] = location{size: info.Size()}
		}
	}

	return s, nil
}

// register records where x's chunks are found (the caller holds s.mu or
// is the only user).
func (s *Store) register(x *Index) {
	s.idx[x.Blob] = x

	for _, c := range x.Chunks {
		if _, ok := s.loc[c.Digest]; !ok {
			s.loc[c.Digest] = location{blob: x.Blob, off: c.Offset, size: c.Size}
		}
	}
}

func (s *Store) loosePath(d string) string {
	return filepath.Join(s.dir, "chunks/sha256", strings.TrimPrefix(d, "sha256:"))
}

// Has reports whether the chunk is held (loose or inside a blob).
func (s *Store) Has(d string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()

	_, ok := s.loc[d]

	return ok
}

// Missing returns the chunks of x the store does not hold, in order.
func (s *Store) Missing(x *Index) []Chunk {
	var out []Chunk

	for _, c := range x.Chunks {
		if !s.Has(c.Digest) {
			out = append(out, c)
		}
	}

	return out
}

// Runs groups chunks into runs that are contiguous in the blob, so each
// run costs one range request.
func Runs(cs []Chunk) [][]Chunk {
	var out [][]Chunk

	for _, c := range cs {
		if n := len(out); n > 0 {
			last := out[n-1][len(out[n-1])-1]
			if last.Offset+last.Size == c.Offset {
				out[n-1] = append(out[n-1], c)

				continue
			}
		}

		out = append(out, []Chunk{c})
	}

	return out
}

// Receive reads the chunks of one run from r, in order, verifies each
// against its digest and stores it durably before reading the next: when
// the transfer is cut, every chunk finished so far is kept. A chunk whose
// bytes do not match is refused and not stored; the error names it and
// blob.
func (s *Store) Receive(blob string, run []Chunk, r io.Reader) error {
	buf := make([]byte, MaxSize)

	for _, c := range run {
		data := buf[:c.Size]
		if _, err := io.ReadFull(r, data); err != nil {
			return fmt.Errorf("receiving chunk %s of blob %s: %w", c.Digest, blob, err)
		}

		if got := Digest(data); got != c.Digest {
			return fmt.Errorf("receiving chunk %s of blob %s: %w: got %s; chunk refused, nothing stored", c.Digest, blob, ErrCorruptChunk, got)
		}

		if s.Has(c.Digest) {
			continue
		}

		if _, err := fsutil.WriteAtomic(s.loosePath(c.Digest), bytes.NewReader(data)); err != nil {
			return fmt.Errorf("storing chunk %s of blob %s: %w", c.Digest, blob, err)
		}

		s.mu.Lock()
		s.loc[c.Digest] = location{size: c.Size}
		s.mu.Unlock()
	}

	return nil
}

// read returns a held chunk's bytes, verified (a chunk read from disk is
// checked too: a flipped bit on the site's disk must not reach a node).
func (s *Store) read(blob string, c Chunk, buf []byte) ([]byte, error) {
	data, err := s.readOnce(blob, c, buf)
	if errors.Is(err, fs.ErrNotExist) {
		// Another blob holding this chunk was completed meanwhile and its
		// loose copy removed: the chunk is now found in that blob.
		data, err = s.readOnce(blob, c, buf)
	}

	return data, err
}

func (s *Store) readOnce(blob string, c Chunk, buf []byte) ([]byte, error) {
	s.mu.Lock()
	l, ok := s.loc[c.Digest]
	s.mu.Unlock()

	if !ok {
		return nil, fmt.Errorf("chunk %s of blob %s: not held", c.Digest, blob)
	}

	data := buf[:c.Size]

	path, off := s.loosePath(c.Digest), int64(0)
	if l.blob != "" {
		path, off = s.blobPath(l.blob), l.off
	}

	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading chunk %s of blob %s: %w", c.Digest, blob, err)
	}
	defer f.Close()

	if _, err := f.ReadAt(data, off); err != nil {
		return nil, fmt.Errorf("reading chunk %s of blob %s: %w", c.Digest, blob, err)
	}

	if got := Digest(data); got != c.Digest {
		return nil, fmt.Errorf("reading chunk %s of blob %s from %s: %w: got %s", c.Digest, blob, path, ErrCorruptChunk, got)
	}

	return data, nil
}

// Assemble writes blob x to w from held chunks, then checks the whole
// blob's digest. The caller keeps w's content only when Assemble returns nil.
func (s *Store) Assemble(x *Index, w io.Writer) error {
	h := sha256.New()
	buf := make([]byte, MaxSize)

	for _, c := range x.Chunks {
		data, err := s.read(x.Blob, c, buf)
		if err != nil {
			return err
		}

		h.Write(data)

		if _, err := w.Write(data); err != nil {
			return fmt.Errorf("assembling %s: %w", x.Blob, err)
		}
	}

	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != x.Blob {
		return fmt.Errorf("assembling %s: %w: got %s; not stored", x.Blob, ErrBlobMismatch, got)
	}

	return nil
}

// AddBlob records that the complete blob of x is stored at blobPath: its
// index is saved, its chunks are found there from now on, and the loose
// copies of those chunks are removed.
func (s *Store) AddBlob(x *Index) error {
	path := filepath.Join(s.dir, "indexes/sha256", strings.TrimPrefix(x.Blob, "sha256:")+".json")
	if _, err := fsutil.WriteAtomic(path, bytes.NewReader(x.Encode())); err != nil {
		return fmt.Errorf("saving chunk index: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	for _, c := range x.Chunks {
		if l, ok := s.loc[c.Digest]; ok && l.blob == "" {
			delete(s.loc, c.Digest)
			os.Remove(s.loosePath(c.Digest)) //nolint:errcheck // an orphan costs only disk
		}
	}

	s.register(x)

	return nil
}

// RemoveBlob forgets a complete blob that is about to be deleted (site
// cache eviction): its index goes, and its chunks are no longer found in
// it. A chunk that another held blob also contains is found there from now
// on. The caller must make sure no Assemble is reading from the blob.
func (s *Store) RemoveBlob(blob string) error {
	s.mu.Lock()

	delete(s.idx, blob)

	for d, l := range s.loc {
		if l.blob == blob {
			delete(s.loc, d)
		}
	}

	for _, x := range s.idx {
		s.register(x)
	}

	s.mu.Unlock()

	path := filepath.Join(s.dir, "indexes/sha256", strings.TrimPrefix(blob, "sha256:")+".json")
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing chunk index of %s: %w", blob, err)
	}

	return nil
}

// Stats are for logs and tests.
type Stats struct {
	Chunks, Loose int
}

// Stats counts the chunks held.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()

	st := Stats{Chunks: len(s.loc)}

	for _, l := range s.loc {
		if l.blob == "" {
			st.Loose++
		}
	}

	return st
}
