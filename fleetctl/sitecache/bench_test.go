package sitecache_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
)

func benchEnv(t *testing.T) (rate string, rtt time.Duration, mib int, compress string) {
	t.Helper()

	if os.Getenv("LF_SC_BENCH") != "1" {
		t.Skip("skipped: a bench; LF_SC_BENCH=1 runs it (make bench, section sitecache)")
	}

	get := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}

		return def
	}

	rtt, err := time.ParseDuration(get("LF_SC_BENCH_RTT", "100ms"))
	require.NoError(t, err)

	mib, err = strconv.Atoi(get("LF_SC_BENCH_MIB", "32"))
	require.NoError(t, err)

	return get("LF_SC_BENCH_RATE", "2mbit"), rtt, mib, get("LF_SC_BENCH_COMPRESS", "gzip-rsyncable")
}

func layerBytes(t *testing.T, rel string, mib int) []byte {
	t.Helper()

	b, err := release(rel, mib).Layer()
	require.NoError(t, err)

	return b
}

// TestSiteCacheBench: WAN bytes and time for a 3-node site on the shaped
// link, for the first release and two updates (patch: one Go binary
// rebuilt; kernel: vmlinuz replaced), naive (every node pulls from the
// region) vs site cache (whole blobs) vs site cache + chunk delta. Prints
// Markdown rows prefixed "BENCH ".
func TestSiteCacheBench(t *testing.T) {
	rate, rtt, mib, compress := benchEnv(t)
	t.Setenv("LF_SC_COMPRESS", compress) // for layerBytes in this process

	l := newLink(t, rate, rtt)
	l.mib = mib
	l.env = []string{"LF_SC_COMPRESS=" + compress}
	l.startRegion()

	rels := []struct{ rel, tag string }{{"base", "v1"}, {"patch", "v2"}, {"kernel", "v3"}}
	for _, r := range rels {
		l.push(r.rel, r.tag, true)
	}

	full := int64(len(layerBytes(t, "base", mib)))

	delay := "RTT by netem"
	if !l.netem {
		delay = "RTT emulated by a per-request delay at the region (no sch_netem in this kernel)"
	}

	fmt.Printf("BENCH Link: %s (tc), %s %s; image: one layer of %d bytes (kernel + initramfs compressed %s); 3 nodes pulling at once.\n", rate, rtt, delay, full, compress)
	fmt.Println("BENCH")
	fmt.Println("BENCH | release | mode | WAN bytes | % of one full image | time (s) |")
	fmt.Println("BENCH |---|---|---:|---:|---:|")

	row := func(rel, mode string, p *proc, rx0 int64, start time.Time) {
		require.True(t, p.wait(t, 30*time.Minute), "%s %s:\n%s", rel, mode, p.out)

		wan := l.rxBytes() - rx0
		fmt.Printf("BENCH | %s | %s | %d | %.1f %% | %.1f |\n", rel, mode, wan, 100*float64(wan)/float64(full), time.Since(start).Seconds())
	}

	// Naive: every node pulls the whole layer from the region. The kernel
	// release is the same pull of a same-size layer, so it is not repeated.
	rx0, start := l.rxBytes(), time.Now()
	row("patch (and kernel: the same whole-layer pull)", "naive (each node pulls)", l.nodesFrom(l.regionIP+":5000", "v2"), rx0, start)

	// Site cache without, then with chunk delta. The delta run starts from
	// a copy of the first run's storage after the first release (the same
	// state: whole blobs are indexed locally when stored), so the first
	// release is not pulled twice.
	plain, delta := filepath.Join(l.tmp, "plain"), filepath.Join(l.tmp, "delta")

	c := l.startCacheDelta(plain, 0, false)

	for i, r := range rels {
		rx0, start := l.rxBytes(), time.Now()
		row(r.rel, "site cache", l.nodes(r.tag), rx0, start)

		if i == 0 {
			out, err := exec.Command("cp", "-a", plain, delta).CombinedOutput()
			require.NoError(t, err, "%s", out)
		}
	}

	stop(c)

	c = l.startCacheDelta(delta, 0, true)

	for _, r := range rels[1:] {
		rx0, start := l.rxBytes(), time.Now()
		row(r.rel, "site cache + chunk delta", l.nodes(r.tag), rx0, start)
	}

	stop(c)
}

func stop(c *proc) {
	c.cmd.Process.Signal(os.Interrupt) //nolint:errcheck
	c.cmd.Process.Kill()               //nolint:errcheck
	<-c.done
}

// TestSiteCacheCompressionBench: how delta-friendly each way of
// compressing the initramfs is. No link: the bytes a site holding release
// N-1 must receive are the new chunks of N's layer (what the site cache
// fetches, without headers), against that form's own full layer.
func TestSiteCacheCompressionBench(t *testing.T) {
	_, _, mib, _ := benchEnv(t)

	fmt.Println("BENCH")
	fmt.Println("BENCH | initramfs compression | full layer (bytes) | patch: new chunk bytes | % | kernel: new chunk bytes | % |")
	fmt.Println("BENCH |---|---:|---:|---:|---:|---:|")

	for _, mode := range []string{"none", "gzip", "gzip-rsyncable", "zstd", "zstd-rsyncable", "zstd-rsyncable-B1M"} {
		t.Setenv("LF_SC_COMPRESS", mode)

		split := func(rel string) *chunks.Index {
			b := layerBytes(t, rel, mib)
			x, err := chunks.Split(bytes.NewReader(b), chunks.Digest(b))
			require.NoError(t, err)

			return x
		}

		base, patch, kernel := split("base"), split("patch"), split("kernel")
		newBytes := func(x *chunks.Index, have ...*chunks.Index) int64 {
			held := map[string]bool{}
			for _, h := range have {
				for _, c := range h.Chunks {
					held[c.Digest] = true
				}
			}

			var n int64

			for _, c := range x.Chunks {
				if !held[c.Digest] {
					held[c.Digest] = true
					n += c.Size
				}
			}

			return n
		}

		np, nk := newBytes(patch, base), newBytes(kernel, base, patch)
		fmt.Printf("BENCH | %s | %d | %d | %.1f %% | %d | %.1f %% |\n", mode, base.Size, np, 100*float64(np)/float64(base.Size), nk, 100*float64(nk)/float64(base.Size))
	}
}
