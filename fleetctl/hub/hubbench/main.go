// Command hubbench measures fleetctl hub with many simulated nodes that
// speak the real protocol (SideroLink provisioning API, then WireGuard
// tunnelled over gRPC, handshakes and keepalives included). The hub runs as
// its own process (the real `fleetctl hub`), so its CPU time and RSS are
// read from /proc without the simulated nodes in them; the nodes all run in
// this process. It prints one Markdown table row per peer count.
//
// Usage: hubbench --fleetctl BIN --peers 100,1000 [--idle 30s]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
	"github.com/labfleet/labfleet/fleetctl/store"
)

func main() {
	var (
		bin         = flag.String("fleetctl", "", "fleetctl binary")
		peersFlag   = flag.String("peers", "100,1000", "comma-separated peer counts, one hub run each")
		idle        = flag.Duration("idle", 30*time.Second, "idle time measured after all peers connected (covers a 25s keepalive round)")
		concurrency = flag.Int("concurrency", 32, "peers enrolling at once")
		udp         = flag.Bool("udp", false, "WireGuard over UDP instead of the gRPC tunnel (heavier on the simulating side)")
	)

	flag.Parse()

	if *bin == "" {
		fmt.Fprintln(os.Stderr, "hubbench: --fleetctl is required")
		os.Exit(2)
	}

	fmt.Println("| peers | transport | time to accept all | hub CPU to accept all | hub RSS before | hub RSS connected | RSS per peer | hub CPU idle | simulator RSS |")
	fmt.Println("|---:|---|---:|---:|---:|---:|---:|---:|---:|")

	for _, s := range strings.Split(*peersFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "hubbench: --peers %q: not a count\n", s)
			os.Exit(2)
		}

		row, err := run(*bin, n, *concurrency, *idle, !*udp)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hubbench: %d peers: %v\n", n, err)
			os.Exit(1)
		}

		fmt.Println(row)
	}
}

func run(bin string, n, concurrency int, idle time.Duration, tunnel bool) (string, error) {
	dir, err := os.MkdirTemp("", "hubbench")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)

	db := filepath.Join(dir, "fleet.db")

	st, err := store.Open(db, store.Options{})
	if err != nil {
		return "", err
	}

	secret, _, err := registry.New(st.DB()).CreateToken(context.Background(), "bench", "hubbench")
	st.Close()

	if err != nil {
		return "", err
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}

	api := l.Addr().String()
	l.Close()

	cmd := exec.Command(bin, "--db", db, "--log-level", "warn", "hub", "--api-listen", api,
		"--wireguard-listen", "127.0.0.1:0", "--interface", fmt.Sprintf("lfbench%d", os.Getpid()%10000),
		"--prefix", "fdbe:4c11:0:1::/64")

	stderr, err := os.Create(filepath.Join(dir, "hub.log"))
	if err != nil {
		return "", err
	}
	defer stderr.Close()

	cmd.Stderr = stderr

	if err := cmd.Start(); err != nil {
		return "", err
	}

	defer func() {
		cmd.Process.Signal(os.Interrupt) //nolint:errcheck
		cmd.Wait()                       //nolint:errcheck
	}()

	if err := waitTCP(api, 30*time.Second); err != nil {
		return "", fmt.Errorf("hub did not start: %w", err)
	}

	pid := cmd.Process.Pid
	rssBefore := rssKiB(pid)
	cpu0 := cpuSeconds(pid)
	start := time.Now()

	peers := make([]*simpeer.Peer, n)
	sem := make(chan struct{}, concurrency)

	var (
		wg     sync.WaitGroup
		failed atomic.Int32
		first  atomic.Value
	)

	ctx := context.Background()

	for i := range n {
		wg.Add(1)
		sem <- struct{}{}

		go func() {
			defer wg.Done()
			defer func() { <-sem }()

			var p *simpeer.Peer

			err := retry(ctx, 5, func() error {
				var err error

				p, err = simpeer.Connect(ctx, simpeer.Options{
					API: api, JoinToken: secret, UUID: fmt.Sprintf("bench-%05d", i), UniqueToken: strconv.Itoa(i),
					TalosVersion: "v1.14.1", Tunnel: tunnel, Light: true, Keepalive: 25 * time.Second,
				})

				return err
			})
			if err == nil {
				wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				err = p.WaitHandshake(wctx, time.Time{})

				cancel()
			}

			if err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, err)
			}

			peers[i] = p
		}()
	}

	wg.Wait()

	acceptAll := time.Since(start)
	cpuAccept := cpuSeconds(pid) - cpu0

	defer func() {
		for _, p := range peers {
			if p != nil {
				p.Close()
			}
		}
	}()

	if f := failed.Load(); f > 0 {
		return "", fmt.Errorf("%d of %d peers did not connect (first: %v)", f, n, first.Load())
	}

	rssConnected := rssKiB(pid)
	cpuIdle0 := cpuSeconds(pid)

	time.Sleep(idle)

	cpuIdle := (cpuSeconds(pid) - cpuIdle0) / idle.Seconds() * 100
	rssIdle := rssKiB(pid)

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)

	transport := "gRPC tunnel"
	if !tunnel {
		transport = "UDP"
	}

	perPeer := float64(max(rssIdle, rssConnected)-rssBefore) / float64(n)

	return fmt.Sprintf("| %d | %s | %.1f s | %.1f s | %.1f MiB | %.1f MiB | %.0f KiB | %.1f %% | %.0f MiB |",
		n, transport, acceptAll.Seconds(), cpuAccept, float64(rssBefore)/1024, float64(max(rssIdle, rssConnected))/1024,
		perPeer, cpuIdle, float64(selfRSSKiB())/1024), nil
}

func retry(ctx context.Context, attempts int, fn func() error) error {
	var err error

	for i := range attempts {
		if err = fn(); err == nil {
			return nil
		}

		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(i+1) * 200 * time.Millisecond):
		}
	}

	return err
}

func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)

	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()

			return nil
		}

		time.Sleep(100 * time.Millisecond)
	}

	return errors.New("timeout")
}

func statusField(path, field string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()

	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)

			return n
		}
	}

	return 0
}

func rssKiB(pid int) int64 { return statusField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS") }

func selfRSSKiB() int64 { return statusField("/proc/self/status", "VmHWM") }

// cpuSeconds is user+system CPU time of a process (clock ticks of 1/100 s).
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}

	// Fields after the command name (which may contain spaces).
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])

	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)

	return (utime + stime) / 100
}
