package sitecache_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
	"github.com/labfleet/labfleet/fleetctl/sitecache/internal/testimage"
	"github.com/labfleet/labfleet/fleetctl/sitecache/mirror"
)

// The namespace side: this test binary re-executed inside a network
// namespace (`ip netns exec`) as the region's registry, a pusher, the
// site cache or the site's nodes. A namespace belongs to a process, so
// each role is its own process, as on real machines.
func TestMain(m *testing.M) {
	roles := map[string]func() error{"region": runRegion, "push": runPush, "cache": runCache, "nodes": runNodes}
	if f, ok := roles[os.Getenv("LF_SC_ROLE")]; ok {
		if err := f(); err != nil {
			fmt.Println("ROLE-ERROR", err)
			os.Exit(1)
		}

		os.Exit(0)
	}

	os.Exit(m.Run())
}

// release is the image of one release name, the same in every process;
// LF_SC_COMPRESS picks how its initramfs is compressed.
func release(name string, mib int) testimage.Release {
	base := testimage.Base(mib << 20)
	base.Compress = compressor(os.Getenv("LF_SC_COMPRESS"))

	switch name {
	case "patch":
		return base.Patch(3)
	case "kernel":
		return base.Patch(3).Kernel()
	case "kernel2":
		return base.Patch(3).Kernel().Kernel()
	}

	return base
}

// runRegion serves an in-memory registry. LF_SC_RTT delays every answer
// (a round trip of the WAN, where the kernel has no netem); a file at
// LF_SC_CORRUPT naming a blob digest makes the next ranged GET of that blob
// carry one flipped byte (a corrupting path), once.
func runRegion() error {
	rtt, _ := time.ParseDuration(os.Getenv("LF_SC_RTT"))
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	corruptFile := os.Getenv("LF_SC_CORRUPT")

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(rtt)

		if d, err := os.ReadFile(corruptFile); err == nil && r.Header.Get("Range") != "" && strings.HasSuffix(r.URL.Path, "/blobs/"+strings.TrimSpace(string(d))) {
			os.Remove(corruptFile) //nolint:errcheck
			w = &corruptWriter{ResponseWriter: w}
		}

		reg.ServeHTTP(w, r)
	})

	ln, err := net.Listen("tcp", os.Getenv("LF_SC_LISTEN"))
	if err != nil {
		return err
	}

	fmt.Println("REGION-SERVING")

	return http.Serve(ln, h) //nolint:gosec // test server
}

type corruptWriter struct {
	http.ResponseWriter
	done bool
}

func (c *corruptWriter) Write(p []byte) (int, error) {
	if !c.done && len(p) > 10 {
		p = append([]byte{}, p...)
		p[10] ^= 0xff
		c.done = true
	}

	return c.ResponseWriter.Write(p)
}

// compressor compresses with the system's gzip or zstd, deterministically
// (-n: no name or time in the gzip header); "" is no compression.
func compressor(mode string) func([]byte) ([]byte, error) {
	args := map[string][]string{
		"gzip":           {"gzip", "-n", "-6"},
		"gzip-rsyncable": {"gzip", "-n", "-6", "--rsyncable"},
		"zstd":           {"zstd", "-q", "-3", "-c"},
		"zstd-rsyncable": {"zstd", "-q", "-3", "-c", "--rsyncable"},
		// zstd synchronises only at the edges of its jobs (-B); the default
		// job is several MiB at -3, so smaller jobs resynchronise sooner.
		"zstd-rsyncable-B1M": {"zstd", "-q", "-3", "-c", "--rsyncable", "-B1048576"},
	}[mode]
	if args == nil {
		return nil
	}

	return func(b []byte) ([]byte, error) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader(string(b))

		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}

		return out, nil
	}
}

func runPush() error {
	mib, _ := strconv.Atoi(os.Getenv("LF_SC_MIB"))

	img, err := release(os.Getenv("LF_SC_RELEASE"), mib).Image()
	if err != nil {
		return err
	}

	ref, err := name.ParseReference(os.Getenv("LF_SC_REF"), name.Insecure)
	if err != nil {
		return err
	}

	if err := remote.Write(ref, img); err != nil {
		return err
	}

	if os.Getenv("LF_SC_INDEX") == "1" {
		if _, err := chunks.Publish(context.Background(), ref); err != nil {
			return err
		}
	}

	fmt.Println("PUSHED")

	return nil
}

func runCache() error {
	bps, _ := strconv.ParseInt(os.Getenv("LF_SC_BPS"), 10, 64)

	m, err := mirror.New(mirror.Options{
		Upstream: os.Getenv("LF_SC_UPSTREAM"), Insecure: true, Dir: os.Getenv("LF_SC_DIR"),
		BytesPerSecond: bps, ChunkDelta: os.Getenv("LF_SC_DELTA") == "1",
		Logger: slog.New(slog.NewTextHandler(os.Stdout, nil)),
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", os.Getenv("LF_SC_LISTEN"))
	if err != nil {
		return err
	}

	srv := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}

	go srv.Serve(ln) //nolint:errcheck

	fmt.Println("CACHE-SERVING")
	<-ctx.Done()
	m.Close()

	return srv.Close()
}

// runNodes pulls LF_SC_REF on LF_SC_NODES simulated nodes at once, each
// reading every blob to its end (ggcr checks digests as it reads).
func runNodes() error {
	n, _ := strconv.Atoi(os.Getenv("LF_SC_NODES"))

	ref, err := name.ParseReference(os.Getenv("LF_SC_REF"), name.Insecure)
	if err != nil {
		return err
	}

	var wg sync.WaitGroup

	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = pullAll(ref) })
	}

	wg.Wait()

	return errors.Join(errs...)
}

func pullAll(ref name.Reference) error {
	img, err := remote.Image(ref)
	if err != nil {
		return err
	}

	return testimage.ReadAll(img)
}

// ---- the test side ----

// loggedWANBytes is the wanBytes of the cache's "blob stored" line for d.
func loggedWANBytes(t *testing.T, logs, d string) int64 {
	t.Helper()

	for _, ln := range strings.Split(logs, "\n") {
		if !strings.Contains(ln, `msg="blob stored" digest=`+d) {
			continue
		}

		_, v, ok := strings.Cut(ln, " wanBytes=")
		require.True(t, ok, ln)

		n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		require.NoError(t, err, ln)

		return n
	}

	t.Fatalf("no blob stored line for %s:\n%s", d, logs)

	return 0
}

type lines struct {
	mu sync.Mutex
	l  []string
}

func (o *lines) add(s string) { o.mu.Lock(); o.l = append(o.l, s); o.mu.Unlock() }

func (o *lines) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()

	return strings.Join(o.l, "\n")
}

// link is a site joined to its region by a shaped veth pair.
type link struct {
	t                *testing.T
	region, site     string
	regionIF, siteIF string
	regionIP, siteIP string
	rtt              time.Duration
	mib              int
	env              []string // added to every role (e.g. LF_SC_COMPRESS)
	netem            bool
	corruptFile, tmp string
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()

	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
}

// newLink makes the namespaces and the veth pair, shaped to rate (e.g.
// "2mbit") and rtt. The download direction (region -> site) is shaped on
// the region's side. Delay uses netem where the kernel has it; otherwise
// the region's server waits rtt before each answer (what a round trip
// costs a request; TCP's window growth is not modelled then).
func newLink(t *testing.T, rate string, rtt time.Duration) *link {
	t.Helper()

	if os.Geteuid() != 0 {
		t.Skip("skipped: network namespaces need root (CAP_NET_ADMIN); CI runs as root")
	}

	for _, c := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("skipped: %s (iproute2) is not installed; hack/install-deps.sh installs it", c)
		}
	}

	id := os.Getpid() % 100000
	l := &link{
		t: t, region: fmt.Sprintf("lfscreg%d", id), site: fmt.Sprintf("lfscsite%d", id),
		regionIF: fmt.Sprintf("lfscr%d", id), siteIF: fmt.Sprintf("lfscs%d", id),
		regionIP: "10.233.0.1", siteIP: "10.233.0.2", rtt: rtt, tmp: t.TempDir(), mib: testMiB,
	}
	l.corruptFile = filepath.Join(l.tmp, "corrupt")

	for _, ns := range []string{l.region, l.site} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() }) //nolint:errcheck
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}

	run(t, "ip", "link", "add", l.regionIF, "netns", l.region, "type", "veth", "peer", "name", l.siteIF, "netns", l.site)
	run(t, "ip", "-n", l.region, "addr", "add", l.regionIP+"/24", "dev", l.regionIF)
	run(t, "ip", "-n", l.site, "addr", "add", l.siteIP+"/24", "dev", l.siteIF)
	run(t, "ip", "-n", l.region, "link", "set", l.regionIF, "up")
	run(t, "ip", "-n", l.site, "link", "set", l.siteIF, "up")

	half := fmt.Sprintf("%dms", rtt.Milliseconds()/2)
	if exec.Command("tc", "-n", l.region, "qdisc", "add", "dev", l.regionIF, "root", "netem", "delay", half, "rate", rate).Run() == nil {
		l.netem = true
		run(t, "tc", "-n", l.site, "qdisc", "add", "dev", l.siteIF, "root", "netem", "delay", half)
	} else {
		// No sch_netem in this kernel: a token bucket for the rate.
		run(t, "tc", "-n", l.region, "qdisc", "add", "dev", l.regionIF, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")
	}

	return l
}

// rxBytes is what the site's end of the WAN link received so far.
func (l *link) rxBytes() int64 {
	l.t.Helper()

	out, err := exec.Command("ip", "-n", l.site, "-s", "-j", "link", "show", "dev", l.siteIF).Output()
	require.NoError(l.t, err)

	var st []struct {
		Stats64 struct {
			RX struct {
				Bytes int64 `json:"bytes"`
			} `json:"rx"`
		} `json:"stats64"`
	}

	require.NoError(l.t, json.Unmarshal(out, &st))

	return st[0].Stats64.RX.Bytes
}

type proc struct {
	cmd  *exec.Cmd
	out  *lines
	done chan struct{}
}

func (l *link) start(ns string, env ...string) *proc {
	l.t.Helper()

	exe, err := os.Executable()
	require.NoError(l.t, err)

	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), l.env...), env...)

	pipe, err := cmd.StdoutPipe()
	require.NoError(l.t, err)

	cmd.Stderr = cmd.Stdout
	require.NoError(l.t, cmd.Start())

	p := &proc{cmd: cmd, out: &lines{}, done: make(chan struct{})}

	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.out.add(sc.Text())
		}

		cmd.Wait() //nolint:errcheck
		close(p.done)
	}()

	l.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		<-p.done
	})

	return p
}

func (p *proc) waitFor(t *testing.T, marker string, timeout time.Duration) {
	t.Helper()

	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.out.String(), marker) {
			return
		}

		select {
		case <-p.done:
			if strings.Contains(p.out.String(), marker) {
				return
			}

			t.Fatalf("process ended before %q:\n%s", marker, p.out)
		case <-time.After(50 * time.Millisecond):
		}
	}

	t.Fatalf("timed out waiting for %q:\n%s", marker, p.out)
}

// wait runs a short-lived role to its end and returns whether it succeeded.
func (p *proc) wait(t *testing.T, timeout time.Duration) bool {
	t.Helper()

	select {
	case <-p.done:
		return p.cmd.ProcessState.Success()
	case <-time.After(timeout):
		t.Fatalf("timed out:\n%s", p.out)
	}

	return false
}

const testMiB = 8

func (l *link) startRegion() {
	r := l.start(l.region, "LF_SC_ROLE=region", "LF_SC_LISTEN="+l.regionIP+":5000", "LF_SC_CORRUPT="+l.corruptFile, "LF_SC_RTT="+l.rttInServer())
	r.waitFor(l.t, "REGION-SERVING", 20*time.Second)
}

func (l *link) rttInServer() string {
	if l.netem {
		return "0s"
	}

	return l.rtt.String()
}

func (l *link) push(rel, tag string, index bool) {
	l.t.Helper()

	idx := "0"
	if index {
		idx = "1"
	}

	p := l.start(l.region, "LF_SC_ROLE=push", "LF_SC_RELEASE="+rel, "LF_SC_MIB="+strconv.Itoa(l.mib), "LF_SC_INDEX="+idx,
		"LF_SC_REF="+l.regionIP+":5000/labos/installer:"+tag)
	require.True(l.t, p.wait(l.t, 60*time.Second), "push %s:\n%s", rel, p.out)
}

func (l *link) startCache(dir string, bps int64) *proc { return l.startCacheDelta(dir, bps, true) }

func (l *link) startCacheDelta(dir string, bps int64, delta bool) *proc {
	d := "0"
	if delta {
		d = "1"
	}

	c := l.start(l.site, "LF_SC_ROLE=cache", "LF_SC_LISTEN=127.0.0.1:5000", "LF_SC_UPSTREAM="+l.regionIP+":5000",
		"LF_SC_DIR="+dir, "LF_SC_DELTA="+d, "LF_SC_BPS="+strconv.FormatInt(bps, 10))
	c.waitFor(l.t, "CACHE-SERVING", 20*time.Second)

	return c
}

func (l *link) nodes(tag string) *proc { return l.nodesFrom("127.0.0.1:5000", tag) }

// nodesFrom: three nodes pulling from host (the cache, or the region
// directly for the naive case).
func (l *link) nodesFrom(host, tag string) *proc {
	return l.start(l.site, "LF_SC_ROLE=nodes", "LF_SC_NODES=3", "LF_SC_REF="+host+"/labos/installer:"+tag)
}

func layerOf(t *testing.T, rel string) (string, []byte) {
	t.Helper()

	b, err := release(rel, testMiB).Layer()
	require.NoError(t, err)

	return chunks.Digest(b), b
}

// newChunkBytes is what a site holding the layers of have must receive
// for rel's layer: the bytes of its chunks found in none of them.
func newChunkBytes(t *testing.T, rel string, have ...string) int64 {
	t.Helper()

	held := map[string]bool{}

	for _, h := range have {
		d, b := layerOf(t, h)
		x, err := chunks.Split(strings.NewReader(string(b)), d)
		require.NoError(t, err)

		for _, c := range x.Chunks {
			held[c.Digest] = true
		}
	}

	d, b := layerOf(t, rel)
	x, err := chunks.Split(strings.NewReader(string(b)), d)
	require.NoError(t, err)

	var n int64

	for _, c := range x.Chunks {
		if !held[c.Digest] {
			held[c.Digest] = true
			n += c.Size
		}
	}

	return n
}

// A site with three nodes behind a shaped link: each blob crosses the WAN
// once; a patch release sends only its changed chunks; a transfer killed
// half-way resumes without re-sending finished chunks; a corrupted chunk is
// refused (and the nodes still get the exact image).
func TestSiteCacheOverShapedLink(t *testing.T) {
	l := newLink(t, "40mbit", 20*time.Millisecond)
	l.startRegion()

	dir := filepath.Join(l.tmp, "cache")
	cache := l.startCache(dir, 0)

	_, full := layerOf(t, "base")
	imageBytes := int64(len(full))

	// 1. Three nodes, one WAN transfer.
	l.push("base", "v1", true)

	rx0 := l.rxBytes()
	require.True(t, l.nodes("v1").wait(t, 120*time.Second))

	wan := l.rxBytes() - rx0
	t.Logf("v1: %d WAN bytes for 3 nodes, image layer %d", wan, imageBytes)
	require.Greater(t, wan, imageBytes, "the image crossed the link")
	require.Less(t, wan, imageBytes*110/100, "each blob crossed the WAN once, not once per node")

	// 2. Patch release: only the changed chunks.
	l.push("patch", "v2", true)

	rx0 = l.rxBytes()
	require.True(t, l.nodes("v2").wait(t, 120*time.Second))

	wan = l.rxBytes() - rx0
	need := newChunkBytes(t, "patch", "base")
	t.Logf("v2 (patch): %d WAN bytes, new chunks %d, image %d (%.1f%%)", wan, need, imageBytes, 100*float64(wan)/float64(imageBytes))
	require.Less(t, wan, need*115/100+64<<10, "only the changed chunks (plus headers)")
	require.Less(t, wan, imageBytes/5)

	// 3. Kernel release, cache killed half-way, restarted: finished chunks
	// are kept. The cache's own cap (1 MB/s) makes the transfer slow
	// enough to cut in the middle, and shows the cap holding.
	l.push("kernel", "v3", true)
	cache.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	<-cache.done

	cache = l.startCache(dir, 1_000_000)
	need = newChunkBytes(t, "kernel", "base", "patch")
	rx0 = l.rxBytes()
	start := time.Now()
	nodes := l.nodes("v3")

	for l.rxBytes()-rx0 < need/2 {
		require.Less(t, time.Since(start), 60*time.Second, "the transfer started:\n%s", cache.out)
		time.Sleep(20 * time.Millisecond)
	}

	elapsed := time.Since(start)
	cut := l.rxBytes() - rx0
	require.NoError(t, cache.cmd.Process.Kill()) // no graceful anything
	<-cache.done
	nodes.wait(t, 60*time.Second) // the nodes fail with the cache gone

	rate := float64(cut) / elapsed.Seconds()
	t.Logf("v3: killed after %d of %d new-chunk bytes in %s (%.0f B/s with a 1 MB/s cap)", cut, need, elapsed, rate)
	require.Less(t, rate, 1_300_000.0, "the WAN cap holds")

	// What the killed cache kept: verified loose chunks on disk.
	var kept int64

	loose, err := os.ReadDir(filepath.Join(dir, "chunkstore/chunks/sha256"))
	require.NoError(t, err)

	for _, e := range loose {
		if info, err := e.Info(); err == nil && !strings.HasPrefix(e.Name(), ".") {
			kept += info.Size()
		}
	}

	t.Logf("v3: the killed cache kept %d bytes of finished chunks", kept)
	require.Greater(t, kept, need/4, "finished chunks survived the kill")

	cache = l.startCache(dir, 0)
	require.True(t, l.nodes("v3").wait(t, 120*time.Second), "after the restart:\n%s", cache.out)

	d3, _ := layerOf(t, "kernel")
	after := loggedWANBytes(t, cache.out.String(), d3)
	t.Logf("v3: the restarted cache fetched %d bytes for the layer; %d WAN bytes in all for v3", after, l.rxBytes()-rx0)
	require.Less(t, after, need-kept+64<<10, "only the chunks not finished before the kill were fetched (plus index and headers)")

	// 4. A corrupted chunk is refused and named; the nodes still get the
	// exact image (whole blob, checked by digest).
	l.push("kernel2", "v4", true)

	d4, _ := layerOf(t, "kernel2")
	require.NoError(t, os.WriteFile(l.corruptFile, []byte(d4), 0o644))
	require.True(t, l.nodes("v4").wait(t, 120*time.Second), "%s", cache.out)

	out := cache.out.String()
	require.Contains(t, out, "of blob "+d4+": chunk digest mismatch")
	require.Contains(t, out, "chunk refused, nothing stored")
	require.Contains(t, out, `msg="blob stored" digest=`+d4+" via=whole")
}
