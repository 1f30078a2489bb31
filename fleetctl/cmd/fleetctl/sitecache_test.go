package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
)

func runCapture(ctx context.Context, args ...string) (string, error) {
	root := newRoot()

	var out bytes.Buffer

	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)

	err := root.ExecuteContext(ctx)

	return out.String(), err
}

func TestCLISiteCacheServeBadInputNamesField(t *testing.T) {
	_, err := runCapture(context.Background(), "site-cache", "serve", "--upstream", "https://r.example/v2", "--storage-dir", t.TempDir())
	require.Equal(t, ExitBadInput, exitCode(err))
	require.ErrorContains(t, err, `upstream: "https://r.example/v2" must be host[:port] only`)

	_, err = runCapture(context.Background(), "site-cache", "serve", "--upstream", "r.example", "--bandwidth-limit", "fast")
	require.Equal(t, ExitBadInput, exitCode(err))
	require.ErrorContains(t, err, "storageDir: required")
	require.ErrorContains(t, err, `bandwidthLimit: "fast" is not a rate`)

	_, err = runCapture(context.Background(), "site-cache", "serve", "--upstream", "r.example", "--storage-dir", t.TempDir(), "--max-bytes", "10MB", "--keep-manifests", "-1")
	require.Equal(t, ExitBadInput, exitCode(err))
	require.ErrorContains(t, err, `maxBytes: "10MB" is below 64 MiB`)
	require.ErrorContains(t, err, `keepManifests: -1 is negative`)
}

func TestCLISiteCacheServeStopsGracefully(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)

	out, err := runCapture(ctx, "-o", "json", "site-cache", "serve", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--insecure", "--storage-dir", t.TempDir(), "--max-bytes", "1GiB")
	require.NoError(t, err)

	var st map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Contains(t, st, "wanBytes")
	require.Contains(t, st, "blobsEvicted")
}

func TestCLISiteCacheIndexJSON(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)

	img, err := random.Image(300<<10, 2)
	require.NoError(t, err)

	ref := strings.TrimPrefix(srv.URL, "http://") + "/labos/installer:v1"
	r, err := name.ParseReference(ref)
	require.NoError(t, err)
	require.NoError(t, remote.Write(r, img))

	out, err := runCapture(context.Background(), "-o", "json", "site-cache", "index", "--insecure", ref)
	require.NoError(t, err)

	var pub []chunks.Published
	require.NoError(t, json.Unmarshal([]byte(out), &pub), out)
	require.Len(t, pub, 2)
	require.False(t, pub[0].Reused)
	require.Contains(t, pub[0].Tag, ":"+chunks.IndexTag(pub[0].Blob))

	_, err = runCapture(context.Background(), "site-cache", "index", "not a ref")
	require.Equal(t, ExitBadInput, exitCode(err))
	require.ErrorContains(t, err, `IMAGE "not a ref"`)
}
