package mirror_test

import (
	"bytes"
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
	"github.com/labfleet/labfleet/fleetctl/sitecache/internal/testimage"
	"github.com/labfleet/labfleet/fleetctl/sitecache/mirror"
)

// upstream is the regional registry with knobs: it counts blob bytes sent,
// can cut the next blob response after some bytes (a dropped link) and
// can flip a byte in range responses (a corrupting path).
type upstream struct {
	h         http.Handler
	blobBytes atomic.Int64

	mu       sync.Mutex
	blobGets map[string]int
	fault    fault
}

// fault applies to the next GET of one blob.
type fault struct {
	blob     string
	cutAfter int64
	corrupt  bool
}

func (u *upstream) setFault(f fault) {
	u.mu.Lock()
	u.fault = f
	u.mu.Unlock()
}

type countingWriter struct {
	http.ResponseWriter
	u       *upstream
	n       int64
	cut     int64
	corrupt bool
	status  int
}

func (c *countingWriter) WriteHeader(s int) { c.status = s; c.ResponseWriter.WriteHeader(s) }

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.corrupt && c.status == http.StatusPartialContent && c.n == 0 && len(p) > 100 {
		p = append([]byte{}, p...)
		p[100] ^= 0xff
	}

	if c.cut > 0 && c.n+int64(len(p)) > c.cut {
		p = p[:c.cut-c.n]
		c.ResponseWriter.Write(p) //nolint:errcheck
		c.u.blobBytes.Add(int64(len(p)))
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}

	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	c.u.blobBytes.Add(int64(n))

	return n, err
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if i := strings.Index(r.URL.Path, "/blobs/sha256:"); i > 0 && r.Method == http.MethodGet {
		d := r.URL.Path[i+len("/blobs/"):]

		u.mu.Lock()
		u.blobGets[d]++

		var f fault
		if u.fault.blob == d {
			f, u.fault = u.fault, fault{}
		}
		u.mu.Unlock()

		w = &countingWriter{ResponseWriter: w, u: u, cut: f.cutAfter, corrupt: f.corrupt}
	}

	u.h.ServeHTTP(w, r)
}

type env struct {
	up       *upstream
	upHost   string
	cacheURL string
	cache    *mirror.Mirror
	dir      string
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.b.Write(p)
}

func newEnv(t *testing.T, delta bool) (*env, *lockedBuf) {
	t.Helper()

	up := &upstream{h: registry.New(registry.Logger(log.New(io.Discard, "", 0))), blobGets: map[string]int{}}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)

	logs := &lockedBuf{}
	e := &env{up: up, upHost: strings.TrimPrefix(upSrv.URL, "http://")}

	dir := t.TempDir()
	e.open(t, dir, delta, logs)

	return e, logs
}

func (e *env) open(t *testing.T, dir string, delta bool, logs *lockedBuf) {
	t.Helper()

	m, err := mirror.New(mirror.Options{
		Upstream: e.upHost, Insecure: true, Dir: dir, ChunkDelta: delta,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	require.NoError(t, err)

	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	t.Cleanup(m.Close)

	e.cache, e.cacheURL, e.dir = m, strings.TrimPrefix(srv.URL, "http://"), dir
}

func (e *env) push(t *testing.T, tag string, r testimage.Release, index bool) v1.Image {
	t.Helper()

	img, err := r.Image()
	require.NoError(t, err)

	ref, err := name.ParseReference(e.upHost + "/labos/installer:" + tag)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img))

	if index {
		_, err := chunks.Publish(context.Background(), ref)
		require.NoError(t, err)
	}

	return img
}

// pull is one node pulling through the cache: every layer read to its end
// (ggcr checks each blob's digest as it reads).
func pull(ctx context.Context, cacheHost, tag string, opts ...remote.Option) error {
	ref, err := name.ParseReference(cacheHost + "/labos/installer:" + tag)
	if err != nil {
		return err
	}

	img, err := remote.Image(ref, append(opts, remote.WithContext(ctx))...)
	if err != nil {
		return err
	}

	return testimage.ReadAll(img)
}

// noRetry: a node that gives up at the first error (ggcr retries 5xx).
var noRetry = remote.WithRetryBackoff(remote.Backoff{Steps: 1})

func layerDigest(t *testing.T, img v1.Image) string {
	t.Helper()

	ls, err := img.Layers()
	require.NoError(t, err)

	d, err := ls[0].Digest()
	require.NoError(t, err)

	return d.String()
}

func layerSize(t *testing.T, img v1.Image) int64 {
	t.Helper()

	ls, err := img.Layers()
	require.NoError(t, err)

	s, err := ls[0].Size()
	require.NoError(t, err)

	return s
}

func TestThreeNodesFetchEachBlobOnce(t *testing.T) {
	e, _ := newEnv(t, true)
	img := e.push(t, "v1", testimage.Base(4<<20), true)
	d := layerDigest(t, img)

	e.up.mu.Lock()
	published := e.up.blobGets[d] // fleetctl site-cache index read it once
	e.up.mu.Unlock()

	before := e.up.blobBytes.Load()

	var wg sync.WaitGroup

	errs := make([]error, 3)
	for i := range 3 {
		wg.Go(func() { errs[i] = pull(context.Background(), e.cacheURL, "v1") })
	}

	wg.Wait()

	for _, err := range errs {
		require.NoError(t, err)
	}

	e.up.mu.Lock()
	require.Equal(t, 1, e.up.blobGets[d]-published, "the layer crossed the WAN once for three nodes")
	e.up.mu.Unlock()

	st := e.cache.Stats()
	require.Equal(t, 3, st.BlobsServed/2, "three nodes served config and layer")
	require.Less(t, e.up.blobBytes.Load()-before, layerSize(t, img)*11/10)
}

func TestPatchReleaseSendsOnlyChangedChunks(t *testing.T) {
	e, _ := newEnv(t, true)
	base := testimage.Base(8 << 20)
	e.push(t, "v1", base, true)
	require.NoError(t, pull(context.Background(), e.cacheURL, "v1"))

	img2 := e.push(t, "v2", base.Patch(3), true)
	before := e.up.blobBytes.Load()
	require.NoError(t, pull(context.Background(), e.cacheURL, "v2"))

	sent := e.up.blobBytes.Load() - before
	full := layerSize(t, img2)

	// One binary of sixteen changed (~4.7% of the image): with chunks of
	// 256 KiB on average the cuts around it add at most a few chunks.
	require.Less(t, sent, full/5, "patch release sent %d of %d bytes", sent, full)
	require.Equal(t, 2, e.cache.Stats().BlobsViaDelta, "v1 and v2 layers")
}

func TestCorruptChunkRefusedAndNodeStillServed(t *testing.T) {
	e, logs := newEnv(t, true)
	base := testimage.Base(4 << 20)
	e.push(t, "v1", base, true)
	require.NoError(t, pull(context.Background(), e.cacheURL, "v1"))

	img2 := e.push(t, "v2", base.Kernel(), true)
	e.up.setFault(fault{blob: layerDigest(t, img2), corrupt: true})

	require.NoError(t, pull(context.Background(), e.cacheURL, "v2"), "the node gets the exact blob (whole fetch after the refusal)")

	st := e.cache.Stats()
	require.Equal(t, 1, st.CorruptRefused)
	require.Equal(t, 1, st.BlobsViaDelta, "only v1's layer")

	x, err := chunks.Split(bytes.NewReader(mustLayer(t, img2)), layerDigest(t, img2))
	require.NoError(t, err)

	logs.mu.Lock()
	out := logs.b.String()
	logs.mu.Unlock()

	require.Contains(t, out, "of blob "+x.Blob+": chunk digest mismatch")
	require.Contains(t, out, "chunk refused, nothing stored")
}

func mustLayer(t *testing.T, img v1.Image) []byte {
	t.Helper()

	ls, err := img.Layers()
	require.NoError(t, err)

	rc, err := ls[0].Compressed()
	require.NoError(t, err)

	defer rc.Close()

	b, err := io.ReadAll(rc)
	require.NoError(t, err)

	return b
}

// A whole-blob download cut half-way: the next attempt asks only for the
// rest (Range from the partial file's end) and the blob is exact.
func TestWholeDownloadResumes(t *testing.T) {
	e, _ := newEnv(t, false)
	img := e.push(t, "v1", testimage.Base(4<<20), false)
	full := layerSize(t, img)

	before := e.up.blobBytes.Load()

	e.up.setFault(fault{blob: layerDigest(t, img), cutAfter: full / 2})
	require.Error(t, pull(context.Background(), e.cacheURL, "v1", noRetry), "the cut fails the first pull")

	require.NoError(t, pull(context.Background(), e.cacheURL, "v1"))

	st := e.cache.Stats()
	require.Greater(t, st.BytesResumed, full/2-(64<<10), "resumed from what arrived")
	require.Less(t, e.up.blobBytes.Load()-before, full*11/10, "finished bytes were not sent again")
}

// A chunk transfer cut half-way, then the cache restarted: the chunks that
// arrived are kept and not sent again.
func TestChunkTransferResumesAfterRestart(t *testing.T) {
	e, logs := newEnv(t, true)
	base := testimage.Base(8 << 20)
	e.push(t, "v1", base, true)
	require.NoError(t, pull(context.Background(), e.cacheURL, "v1"))

	// A kernel release: a 2 MiB run of new chunks.
	img2 := e.push(t, "v2", base.Kernel(), true)
	before := e.up.blobBytes.Load()

	e.up.setFault(fault{blob: layerDigest(t, img2), cutAfter: 1 << 20})
	require.Error(t, pull(context.Background(), e.cacheURL, "v2", noRetry))

	cut := e.up.blobBytes.Load() - before
	e.cache.Close()

	e.open(t, e.dir, true, logs)
	require.NoError(t, pull(context.Background(), e.cacheURL, "v2"))

	total := e.up.blobBytes.Load() - before
	need := newChunkBytes(t, mustLayer(t, img2), layerDigest(t, img2), base)

	// At most the chunk that was in flight at the cut is sent twice.
	require.GreaterOrEqual(t, total, need)
	require.LessOrEqual(t, total, need+chunks.MaxSize, "resumed without re-sending finished chunks (total %d, new chunks %d, cut at %d)", total, need, cut)
	require.Equal(t, 1, e.cache.Stats().BlobsViaDelta, "the restarted cache rebuilt v2 from chunks")
}

func newChunkBytes(t *testing.T, layer []byte, dgst string, old testimage.Release) int64 {
	t.Helper()

	oldLayer, err := old.Layer()
	require.NoError(t, err)

	xo, err := chunks.Split(bytes.NewReader(oldLayer), chunks.Digest(oldLayer))
	require.NoError(t, err)

	have := map[string]bool{}
	for _, c := range xo.Chunks {
		have[c.Digest] = true
	}

	xn, err := chunks.Split(bytes.NewReader(layer), dgst)
	require.NoError(t, err)

	var n int64

	for _, c := range xn.Chunks {
		if !have[c.Digest] {
			n += c.Size
			have[c.Digest] = true
		}
	}

	return n
}

// Names from the URL never leave the cache's directory: a tag or digest
// outside the grammar is refused before it names a file.
func TestBadNamesRefused(t *testing.T) {
	e, _ := newEnv(t, true)
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, "secret"), []byte("SECRET-CONTENT"), 0o600))

	for _, p := range []string{
		"/v2/labos/installer/manifests/..%2F..%2F..%2Fsecret",
		"/v2/labos/installer/manifests/sha256:xyz",
		"/v2/labos/installer/blobs/sha256:..",
		"/v2/labos/installer/blobs/md5:abc",
		"/v2/../../x/manifests/v1",
	} {
		resp, err := http.Get("http://" + e.cacheURL + p)
		require.NoError(t, err)

		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()

		require.Contains(t, []int{http.StatusBadRequest, http.StatusNotFound}, resp.StatusCode, "%s: %s", p, body)
		require.NotContains(t, string(body), "SECRET-CONTENT", p)
	}

	resp, err := http.Post("http://"+e.cacheURL+"/v2/labos/installer/blobs/uploads/", "application/octet-stream", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "read-only")
}
