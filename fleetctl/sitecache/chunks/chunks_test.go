package chunks_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
	"github.com/labfleet/labfleet/fleetctl/sitecache/fsutil"
)

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)

	for i := range b {
		b[i] = byte(r.Uint32())
	}

	return b
}

// Two releases: the second replaces 300 KiB in the middle with other bytes
// of a different length (a rebuilt binary).
func releases() (a, b []byte) {
	a = randBytes(1, 4<<20)
	b = append(append(append([]byte{}, a[:2<<20]...), randBytes(2, 300<<10)...), a[2<<20+200<<10:]...)

	return a, b
}

func split(t *testing.T, data []byte) *chunks.Index {
	t.Helper()

	x, err := chunks.Split(bytes.NewReader(data), chunks.Digest(data))
	require.NoError(t, err)
	require.NoError(t, x.Validate())

	return x
}

type fixture struct {
	dir   string
	store *chunks.Store
}

func (f *fixture) blobPath(d string) string {
	return filepath.Join(f.dir, "blobs", strings.TrimPrefix(d, "sha256:"))
}

func openFixture(t *testing.T, dir string) *fixture {
	t.Helper()

	f := &fixture{dir: dir}

	s, err := chunks.OpenStore(filepath.Join(dir, "store"), f.blobPath)
	require.NoError(t, err)

	f.store = s

	return f
}

func (f *fixture) addBlob(t *testing.T, data []byte) {
	t.Helper()

	x := split(t, data)
	_, err := fsutil.WriteAtomic(f.blobPath(x.Blob), bytes.NewReader(data))
	require.NoError(t, err)
	require.NoError(t, f.store.AddBlob(x))
}

func TestSplitSharesUnchangedChunks(t *testing.T) {
	a, b := releases()
	xa, xb := split(t, a), split(t, b)

	have := map[string]bool{}
	for _, c := range xa.Chunks {
		have[c.Digest] = true
	}

	var newBytes int64

	for _, c := range xb.Chunks {
		if !have[c.Digest] {
			newBytes += c.Size
		}
	}

	// The change is 300 KiB; content-defined cuts resynchronise after it,
	// so at most a few chunks around it are new.
	require.Less(t, newBytes, int64(300<<10+3*chunks.MaxSize), "new bytes %d of %d", newBytes, len(b))
	require.Less(t, newBytes, int64(len(b)/3))
}

func TestSplitChecksDigest(t *testing.T) {
	_, err := chunks.Split(bytes.NewReader([]byte("abc")), "sha256:00")
	require.ErrorContains(t, err, "content has digest "+chunks.Digest([]byte("abc")))
}

func TestReceiveRefusesCorruptChunk(t *testing.T) {
	a, _ := releases()
	x := split(t, a)
	f := openFixture(t, t.TempDir())

	bad := append([]byte{}, a...)
	c1 := x.Chunks[1]
	bad[c1.Offset+10] ^= 0xff

	err := f.store.Receive(x.Blob, x.Chunks, bytes.NewReader(bad))
	require.ErrorIs(t, err, chunks.ErrCorruptChunk)
	require.ErrorContains(t, err, "chunk "+c1.Digest+" of blob "+x.Blob)
	require.False(t, f.store.Has(c1.Digest), "the corrupt chunk is not stored")
	require.True(t, f.store.Has(x.Chunks[0].Digest), "the chunk before it is kept")

	_, statErr := os.Stat(filepath.Join(f.dir, "store/chunks/sha256", strings.TrimPrefix(c1.Digest, "sha256:")))
	require.True(t, os.IsNotExist(statErr))
}

// A cut transfer: the chunks received before the cut survive a restart;
// the second run fetches only the rest, and the rebuilt blob is exact.
func TestResumeKeepsFinishedChunksAndRebuildsExactly(t *testing.T) {
	a, b := releases()
	dir := t.TempDir()
	f := openFixture(t, dir)
	f.addBlob(t, a)

	xb := split(t, b)
	missing := f.store.Missing(xb)
	require.NotEmpty(t, missing)
	require.Less(t, len(missing), len(xb.Chunks), "chunks of release a are reused")

	// Send all missing bytes but cut after the first chunk.
	run := chunks.Runs(missing)[0]
	stream := b[run[0].Offset : run[0].Offset+run[0].Size+100]
	err := f.store.Receive(xb.Blob, run, bytes.NewReader(stream))

	if len(run) > 1 {
		require.ErrorContains(t, err, "receiving chunk "+run[1].Digest)
	}

	f2 := openFixture(t, dir) // restart
	missing2 := f2.store.Missing(xb)
	require.Len(t, missing2, len(missing)-1, "the finished chunk is kept across the restart")

	for _, r := range chunks.Runs(missing2) {
		last := r[len(r)-1]
		require.NoError(t, f2.store.Receive(xb.Blob, r, bytes.NewReader(b[r[0].Offset:last.Offset+last.Size])))
	}

	var out bytes.Buffer
	require.NoError(t, f2.store.Assemble(xb, &out))
	require.True(t, bytes.Equal(b, out.Bytes()))

	_, err = fsutil.WriteAtomic(f2.blobPath(xb.Blob), &out)
	require.NoError(t, err)
	require.NoError(t, f2.store.AddBlob(xb))
	require.Zero(t, f2.store.Stats().Loose, "loose chunks are dropped once their blob is stored")
}

func TestAssembleRefusesCorruptStoredChunk(t *testing.T) {
	a, _ := releases()
	f := openFixture(t, t.TempDir())
	f.addBlob(t, a)

	x := split(t, a)
	raw, err := os.ReadFile(f.blobPath(x.Blob))
	require.NoError(t, err)
	raw[x.Chunks[2].Offset] ^= 1
	require.NoError(t, os.WriteFile(f.blobPath(x.Blob), raw, 0o644))

	err = f.store.Assemble(x, &bytes.Buffer{})
	require.ErrorIs(t, err, chunks.ErrCorruptChunk)
	require.ErrorContains(t, err, x.Chunks[2].Digest)
}

func TestDecodeRefusesForeignParameters(t *testing.T) {
	a, _ := releases()
	x := split(t, a)
	x.AverageBits = 20

	_, err := chunks.Decode(x.Encode(), x.Blob)
	require.ErrorContains(t, err, "chunking parameters differ")

	_, err = chunks.Decode(split(t, a).Encode(), "sha256:other")
	require.ErrorContains(t, err, "describes "+x.Blob)
}

func TestPublishAndFetchIndex(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	t.Cleanup(srv.Close)

	a, _ := releases()
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(a, types.OCIUncompressedLayer))
	require.NoError(t, err)

	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://") + "/labos/installer:v1")
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img))

	ctx := context.Background()

	pub, err := chunks.Publish(ctx, ref)
	require.NoError(t, err)
	require.Len(t, pub, 1)
	require.False(t, pub[0].Reused)
	require.Equal(t, chunks.Digest(a), pub[0].Blob)
	require.True(t, strings.HasSuffix(pub[0].Tag, ":"+chunks.IndexTag(chunks.Digest(a))))

	x, err := chunks.FetchIndex(ctx, ref.Context(), chunks.Digest(a))
	require.NoError(t, err)
	require.Equal(t, split(t, a).Chunks, x.Chunks)

	again, err := chunks.Publish(ctx, ref)
	require.NoError(t, err)
	require.True(t, again[0].Reused)

	_, err = chunks.FetchIndex(ctx, ref.Context(), chunks.Digest([]byte("nope")))
	require.ErrorIs(t, err, chunks.ErrNoIndex)
}

// An evicted blob's chunks are no longer counted on, except those another
// held blob also contains: a later delta fetches the former and reuses the
// latter, read from the blob that remains.
func TestRemoveBlobKeepsSharedChunks(t *testing.T) {
	a, b := releases()
	f := openFixture(t, t.TempDir())
	f.addBlob(t, a)
	f.addBlob(t, b)

	xa, xb := split(t, a), split(t, b)

	inB := map[string]bool{}
	for _, c := range xb.Chunks {
		inB[c.Digest] = true
	}

	require.NoError(t, os.Remove(f.blobPath(xa.Blob)))
	require.NoError(t, f.store.RemoveBlob(xa.Blob))

	var onlyA int

	for _, c := range xa.Chunks {
		assert.Equal(t, inB[c.Digest], f.store.Has(c.Digest), "chunk %s", c.Digest)

		if !inB[c.Digest] {
			onlyA++
		}
	}

	require.Positive(t, onlyA)
	require.Len(t, f.store.Missing(xa), onlyA)
	require.NoError(t, f.store.Assemble(xb, &bytes.Buffer{}), "b's chunks are read from b")

	// and after a restart the removed blob's index is gone too
	g := openFixture(t, f.dir)
	require.Len(t, g.store.Missing(xa), onlyA)
}
