package labbase

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
)

// deltaPatchPackage is the labos package a "patch release" changes in the
// delta bench: built without inlining (-gcflags=PKG=-l), its code changes
// size and every address after it moves, as a real change to one package
// does. The version string changes too (-X main.version, /etc/labos/version).
const deltaPatchPackage = "github.com/labfleet/labfleet/lab/labos/health"

// TestInitramfsDeltaBench measures, on the real lab initramfs (this
// repository's labos as /init, the lab kernel's modules, the host
// binaries), what a site holding release N must receive for a patch
// release N+1 (labos changed, kernel and modules not) through the site
// cache's chunk delta (fleetctl/sitecache/chunks: restic's chunker, 128 KiB
// average), for each initramfs compression: the new chunk bytes of the
// initramfs, and of the initramfs inside a gzip -1 layer (how the installer
// layer is stored today, images/build/installer_layer.go). Prints Markdown
// rows prefixed "BENCH ". Needs the lab assets; LF_DELTA_BENCH=1.
func TestInitramfsDeltaBench(t *testing.T) {
	if os.Getenv("LF_DELTA_BENCH") == "" {
		t.Skip("set LF_DELTA_BENCH=1 (needs _cache/lab-assets; hack/bench.sh delta)")
	}

	repo, err := FindRepoDir()
	require.NoError(t, err)

	assets := DefaultAssetsDir(repo)
	if _, err := os.Stat(filepath.Join(assets, "vmlinuz")); err != nil {
		t.Skipf("lab assets missing at %s (hack/fetch-lab-assets.sh)", assets)
	}

	labos := func(version string, gcflags ...string) string {
		out := filepath.Join(t.TempDir(), "labos")
		args := append([]string{"build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w -buildid= -X main.version=" + version}, gcflags...)
		cmd := exec.Command("go", append(args, "-o", out, DefaultLabosPkg)...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
		msg, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", msg)

		return out
	}

	archive := func(version, bin string) []byte {
		opts := Options{Version: version, LabosBinary: bin, RepoDir: repo, AssetsDir: assets}
		require.NoError(t, opts.setDefaults())

		b := &builder{opts: opts, log: slog.New(slog.DiscardHandler), res: &Result{Timings: map[string]time.Duration{}}}
		ctx := context.Background()

		for _, step := range []func(context.Context) error{b.loadAssets, b.buildInit, b.collectModules, b.collectHostBinaries} {
			require.NoError(t, step(ctx))
		}

		a, err := b.tree.cpioBytes()
		require.NoError(t, err)

		return a
	}

	baseBin := labos("v1.0.0")
	patchBin := labos("v1.0.1", "-gcflags="+deltaPatchPackage+"=-l")
	base, patch := archive("v1.0.0", baseBin), archive("v1.0.1", patchBin)

	fi, err := os.Stat(patchBin)
	require.NoError(t, err)

	fmt.Printf("BENCH cpio %d bytes (release N), /init (labos) %d bytes; patch N+1: %s built with -l, version v1.0.0 -> v1.0.1\n", len(base), fi.Size(), deltaPatchPackage)
	fmt.Println("BENCH")
	fmt.Println("BENCH | initramfs compression | size (bytes) | vs zstd | compress time | patch: new chunk bytes | % of its size | in a gzip -1 layer: new chunk bytes | % |")
	fmt.Println("BENCH |---|---:|---:|---:|---:|---:|---:|---:|")

	var zstdSize int

	for _, kind := range []string{CompressionZstd, CompressionZstdFrames, CompressionZstdRsyncable, CompressionZstdMax, CompressionGzip, CompressionGzipRsyncable, CompressionNone} {
		start := time.Now()
		a, err := compress(kind, base)
		require.NoError(t, err, kind)

		took := time.Since(start)

		b, err := compress(kind, patch)
		require.NoError(t, err, kind)

		if kind == CompressionZstd {
			zstdSize = len(a)
		}

		ga, gb := gzipLayer(t, a), gzipLayer(t, b)
		n, gn := newChunkBytes(t, a, b), newChunkBytes(t, ga, gb)

		fmt.Printf("BENCH | %s | %d | %+.1f %% | %.1f s | %d | %.1f %% | %d | %.1f %% |\n", kind, len(b),
			100*(float64(len(b))/float64(zstdSize)-1), took.Seconds(), n, 100*float64(n)/float64(len(b)), gn, 100*float64(gn)/float64(len(gb)))
	}
}

// gzipLayer compresses as the installer layer does today (compress/gzip,
// BestSpeed): not rsyncable.
func gzipLayer(t *testing.T, data []byte) []byte {
	var buf bytes.Buffer

	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	require.NoError(t, err)

	_, err = zw.Write(data)
	require.NoError(t, err)
	require.NoError(t, zw.Close())

	return buf.Bytes()
}

// newChunkBytes is what a site holding old fetches for next: the bytes of
// next's chunks that old does not have (each counted once).
func newChunkBytes(t *testing.T, old, next []byte) int64 {
	split := func(b []byte) *chunks.Index {
		x, err := chunks.Split(bytes.NewReader(b), chunks.Digest(b))
		require.NoError(t, err)

		return x
	}

	held := map[string]bool{}
	for _, c := range split(old).Chunks {
		held[c.Digest] = true
	}

	var n int64

	for _, c := range split(next).Chunks {
		if !held[c.Digest] {
			held[c.Digest] = true
			n += c.Size
		}
	}

	return n
}
