package mirror_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache/internal/testimage"
	"github.com/labfleet/labfleet/fleetctl/sitecache/mirror"
)

// newCappedEnv is newEnv with a size cap on the stored blobs.
func newCappedEnv(t *testing.T, maxBytes int64, keep int) (*env, *lockedBuf) {
	t.Helper()

	up := &upstream{h: registry.New(registry.Logger(log.New(io.Discard, "", 0))), blobGets: map[string]int{}}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)

	logs := &lockedBuf{}
	e := &env{up: up, upHost: strings.TrimPrefix(upSrv.URL, "http://")}

	m, err := mirror.New(mirror.Options{
		Upstream: e.upHost, Insecure: true, Dir: t.TempDir(), ChunkDelta: true,
		MaxBytes: maxBytes, KeepManifests: keep,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	require.NoError(t, err)

	// small socket buffers on the cache's side: a node that reads slowly
	// keeps the cache writing the blob (the kernel cannot take it all)
	srv := httptest.NewUnstartedServer(m)
	srv.Listener = smallSendBuffers{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(m.Close)

	e.cache, e.cacheURL, e.dir = m, strings.TrimPrefix(srv.URL, "http://"), m.Dir()

	return e, logs
}

type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4096) //nolint:errcheck
	}

	return c, err
}

func blobFile(e *env, d string) string {
	return filepath.Join(e.dir, "blobs/sha256", strings.TrimPrefix(d, "sha256:"))
}

func held(e *env, d string) bool {
	_, err := os.Stat(blobFile(e, d))

	return err == nil
}

func configDigest(t *testing.T, img v1.Image) string {
	t.Helper()

	d, err := img.ConfigName()
	require.NoError(t, err)

	return d.String()
}

// The cache keeps to --max-bytes: least recently used blobs go first, never
// one the newest manifests reference, never one a node is reading; an
// evicted blob is fetched again when asked for.
func TestEvictionKeepsToCapLRUAndNeverMidRead(t *testing.T) {
	const layer = 1 << 20 // each release's layer: about 1 MiB (a new kernel each)

	e, logs := newCappedEnv(t, layer*3/2, 1)

	r1 := testimage.Base(layer)
	r2 := r1.Kernel()
	r3 := r2.Kernel()
	i1, i2, i3 := e.push(t, "v1", r1, true), e.push(t, "v2", r2, true), e.push(t, "v3", r3, true)
	l1, l2, l3 := layerDigest(t, i1), layerDigest(t, i2), layerDigest(t, i3)

	ctx := context.Background()
	require.NoError(t, pull(ctx, e.cacheURL, "v1"))
	require.True(t, held(e, l1))

	// a node reads v1's layer slowly and holds it open (a small receive
	// buffer, so the cache is still writing the blob, not done with it)
	slow := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }) //nolint:errcheck
	}}).DialContext}}
	resp, err := slow.Get("http://" + e.cacheURL + "/v2/labos/installer/blobs/" + l1)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	require.Equal(t, http.StatusOK, resp.StatusCode)

	h := sha256.New()
	_, err = io.CopyN(h, resp.Body, 4096)
	require.NoError(t, err)

	// v2 is pulled: over the cap, and v1's layer is the least recently
	// used blob the newest manifest does not reference, but it is being
	// read: it stays (and the cache is over its cap until the read ends)
	require.NoError(t, pull(ctx, e.cacheURL, "v2"))
	require.True(t, held(e, l1), "a blob being read is never evicted: %s", logs.String())
	require.True(t, held(e, l2))
	assert.Contains(t, logs.String(), "in use")

	_, err = io.Copy(h, resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, l1, "sha256:"+hex.EncodeToString(h.Sum(nil)), "the node got the whole blob intact")

	// the read ended: the next eviction takes v1's blobs
	require.Eventually(t, func() bool { e.cache.Evict(); return !held(e, l1) }, 5*time.Second, 10*time.Millisecond)
	assert.False(t, held(e, configDigest(t, i1)), "v1's config went too")
	assert.True(t, held(e, l2), "the newest manifest's blobs stay")
	assert.LessOrEqual(t, e.cache.Stats().StoredBytes, int64(layer*3/2))
	assert.Contains(t, logs.String(), "blob evicted")

	// v3: v2's layer is now the one to go, without anyone calling Evict
	require.NoError(t, pull(ctx, e.cacheURL, "v3"))
	assert.True(t, held(e, l3))
	assert.False(t, held(e, l2), "evicted after the blob was stored")
	assert.LessOrEqual(t, e.cache.Stats().StoredBytes, int64(layer*3/2))
	assert.GreaterOrEqual(t, e.cache.Stats().BlobsEvicted, 3)

	// an evicted release is fetched again when a node asks for it
	e.up.mu.Lock()
	before := e.up.blobGets[l1]
	e.up.mu.Unlock()

	require.NoError(t, pull(ctx, e.cacheURL, "v1"))

	e.up.mu.Lock()
	assert.Greater(t, e.up.blobGets[l1], before, "v1's layer crossed the WAN again (or its chunks did)")
	e.up.mu.Unlock()
}

// The blobs of the KeepManifests most recently used manifests stay even
// when the cache is over its cap for them (it says so): the release being
// rolled out and the one to roll back to must not be fetched again.
func TestEvictionKeepsNewestManifestsBlobs(t *testing.T) {
	e, logs := newCappedEnv(t, 1, 2) // a cap nothing fits in

	r1 := testimage.Base(256 << 10)
	r2 := r1.Kernel()
	i1, i2, i3 := e.push(t, "v1", r1, false), e.push(t, "v2", r2, false), e.push(t, "v3", r2.Kernel(), false)

	ctx := context.Background()
	require.NoError(t, pull(ctx, e.cacheURL, "v1"))
	require.NoError(t, pull(ctx, e.cacheURL, "v2"))

	assert.True(t, held(e, layerDigest(t, i1)), "v1 is one of the two newest manifests")
	assert.True(t, held(e, layerDigest(t, i2)))
	assert.Contains(t, logs.String(), "site cache over its size cap")

	require.NoError(t, pull(ctx, e.cacheURL, "v3"))
	assert.False(t, held(e, layerDigest(t, i1)), "v1 is no longer among the two newest")
	assert.False(t, held(e, configDigest(t, i1)))
	assert.True(t, held(e, layerDigest(t, i2)))
	assert.True(t, held(e, layerDigest(t, i3)))
}

// Without a cap nothing is evicted.
func TestNoCapNoEviction(t *testing.T) {
	e, _ := newCappedEnv(t, 0, 0)

	r1 := testimage.Base(256 << 10)
	i1, i2 := e.push(t, "v1", r1, false), e.push(t, "v2", r1.Kernel(), false)

	require.NoError(t, pull(context.Background(), e.cacheURL, "v1"))
	require.NoError(t, pull(context.Background(), e.cacheURL, "v2"))
	e.cache.Evict()

	assert.True(t, held(e, layerDigest(t, i1)))
	assert.True(t, held(e, layerDigest(t, i2)))
	assert.Zero(t, e.cache.Stats().BlobsEvicted)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.b.String()
}
