// Command hubbench measures fleetctl hub with many simulated nodes that
// speak the real protocol (SideroLink provisioning API, then WireGuard
// tunnelled over gRPC, handshakes and keepalives included). The hub runs as
// its own process (the real `fleetctl hub`), so its CPU time and RSS are
// read from /proc without the simulated nodes in them; the nodes all run in
// this process. It prints one Markdown table row per peer count.
//
// With --rollout the nodes are full peers (an IP stack each) that serve the
// simulated Talos machine API on their tunnel address, and after the idle
// measurement fleetctl's engine upgrades all of them (package tunnelroll):
// an inventory of N single-node clusters named by machine UUID, resolved
// through the registry in the hub's --db, every call through the hub's TUN
// device and the tunnels. The row then also has the rollout's wall time,
// nodes done/failed and the hub's CPU and RSS during it.
//
// Usage: hubbench --fleetctl BIN --peers 100,1000 [--idle 30s] [--rollout]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labfleet/labfleet/fleetctl/hub/hubbench/tunnelroll"
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
		rollout     = flag.Bool("rollout", false, "then roll an upgrade out over all peers through the tunnels (full peers)")
		rollConc    = flag.Int("rollout-concurrency", 50, "clusters upgraded at once in the rollout")
	)

	flag.Parse()

	if *bin == "" {
		fmt.Fprintln(os.Stderr, "hubbench: --fleetctl is required")
		os.Exit(2)
	}

	header := "| peers | transport | time to accept all | hub CPU to accept all | hub RSS before | hub RSS connected | RSS per peer | hub CPU idle | simulator RSS |"
	rule := "|---:|---|---:|---:|---:|---:|---:|---:|---:|"

	if *rollout {
		header += " rollout wall time | nodes done / failed | hub CPU in rollout | hub RSS in rollout (peak) | calls through tunnels | simulator CPU in rollout |"
		rule += "---:|---:|---:|---:|---:|---:|"
	}

	fmt.Println(header)
	fmt.Println(rule)

	for _, s := range strings.Split(*peersFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "hubbench: --peers %q: not a count\n", s)
			os.Exit(2)
		}

		roll := 0
		if *rollout {
			roll = *rollConc
		}

		row, err := run(*bin, n, *concurrency, *idle, !*udp, roll)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hubbench: %d peers: %v\n", n, err)
			os.Exit(1)
		}

		fmt.Println(row)
	}
}

// run measures one hub with n peers; rollConc > 0 also rolls an upgrade out
// over them, that many clusters at once.
func run(bin string, n, concurrency int, idle time.Duration, tunnel bool, rollConc int) (string, error) {
	dir, err := os.MkdirTemp("", "hubbench")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)

	db := filepath.Join(dir, "fleet.db")
	prefix := netip.MustParsePrefix("fdbe:4c11:0:1::/64")

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
		"--prefix", prefix.String())

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
					API: api, JoinToken: secret, UUID: tunnelroll.UUID(i), UniqueToken: strconv.Itoa(i),
					TalosVersion: "v1.14.1", Tunnel: tunnel, Light: rollConc == 0, Keepalive: 25 * time.Second,
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

	var rollCols string

	if rollConc > 0 {
		if rollCols, err = rollout(ctx, dir, db, pid, prefix, peers, rollConc); err != nil {
			return "", err
		}
	}

	return fmt.Sprintf("| %d | %s | %.1f s | %.1f s | %.1f MiB | %.1f MiB | %.0f KiB | %.1f %% | %.0f MiB |%s",
		n, transport, acceptAll.Seconds(), cpuAccept, float64(rssBefore)/1024, float64(max(rssIdle, rssConnected))/1024,
		perPeer, cpuIdle, float64(selfRSSKiB())/1024, rollCols), nil
}

// rollout upgrades every peer through the hub (the hub process pid, its
// --db and prefix) and returns the row's rollout columns. A rollout that
// did not go through the tunnels as it must (tunnelroll's Check) is an
// error, not a figure.
func rollout(ctx context.Context, dir, db string, pid int, prefix netip.Prefix, peers []*simpeer.Peer, conc int) (string, error) {
	nodes := make([]tunnelroll.Node, len(peers))
	for i, p := range peers {
		nodes[i] = tunnelroll.Node{UUID: tunnelroll.UUID(i), Peer: p}
	}

	f, err := tunnelroll.Serve(filepath.Join(dir, "cluster"), nodes)
	if err != nil {
		return "", err
	}
	defer f.Close()

	// The hub's --db, shared as fleetctl's rollout and hub commands share it.
	st, err := store.Open(db, store.Options{})
	if err != nil {
		return "", err
	}
	defer st.Close()

	var (
		peak atomic.Int64
		done = make(chan struct{})
		wg   sync.WaitGroup
	)

	peak.Store(rssKiB(pid))

	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}

			if r := rssKiB(pid); r > peak.Load() {
				peak.Store(r)
			}
		}
	})

	// The simulator's own CPU (nodes, their IP stacks and TLS, the engine
	// and its SQLite writes) says where the rest of the wall time goes.
	cpu0, self0 := cpuSeconds(pid), cpuSeconds(os.Getpid())
	res, err := tunnelroll.Run(ctx, st, f, prefix, conc)
	cpu, self := cpuSeconds(pid)-cpu0, cpuSeconds(os.Getpid())-self0

	close(done)
	wg.Wait()

	if err != nil {
		return "", fmt.Errorf("%w (%d done, %d failed)", err, res.Done, res.Failed)
	}

	if err := res.Check(f); err != nil {
		return "", fmt.Errorf("rollout did not go through the tunnels: %w", err)
	}

	return fmt.Sprintf(" %.1f s | %d / %d | %.1f s (%.0f %% of a core) | %.1f MiB | %d | %.1f s |",
		res.Wall.Seconds(), res.Done, res.Failed, cpu, cpu/res.Wall.Seconds()*100, float64(peak.Load())/1024, f.Calls(), self), nil
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
