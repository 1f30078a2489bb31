package hub_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// The helper process: the test binary re-executed inside a network
// namespace as the hub or as a node (a namespace belongs to a process; Go
// cannot move one goroutine's sockets into another namespace reliably).
func TestMain(m *testing.M) {
	switch os.Getenv("LF_NETNS_ROLE") {
	case "hub":
		os.Exit(runHubHelper())
	case "peer":
		os.Exit(runPeerHelper())
	}

	os.Exit(m.Run())
}

func runHubHelper() int {
	var cfg hub.Config
	if err := json.Unmarshal([]byte(os.Getenv("LF_HUB_CONFIG")), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}

	st, err := store.Open(os.Getenv("LF_DB"), store.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}
	defer st.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	h, err := hub.New(cfg, registry.New(st.DB()), slog.New(slog.NewTextHandler(os.Stderr, nil)), hub.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}

	if err := h.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}

	return 0
}

func runPeerHelper() int {
	ctx := context.Background()

	p, err := simpeer.Connect(ctx, simpeer.Options{
		API: os.Getenv("LF_API"), JoinToken: os.Getenv("LF_TOKEN"), UUID: os.Getenv("LF_UUID"),
		UniqueToken: "netns", TalosVersion: "v1.14.1", Keepalive: time.Second,
	})
	if err != nil {
		fmt.Println("PEER-ERROR", err)

		return 1
	}
	defer p.Close()

	fmt.Println("PEER-PROVISIONED", p.Resp.GetEndpoints()[0])

	sent := false

	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := p.Ping(pctx)
		cancel()

		if err == nil {
			if !sent {
				sent = p.SendEvent(ctx, hub.DefaultEventSinkPort, "netns-1",
					&machineapi.MachineStatusEvent{Stage: machineapi.MachineStatusEvent_MAINTENANCE}) == nil
			}

			fmt.Println("PING-OK", time.Now().UnixNano())
		}

		time.Sleep(300 * time.Millisecond)
	}
}

type nsHarness struct {
	t   *testing.T
	out sync.Map // role -> *lockedOut
}

type lockedOut struct {
	mu    sync.Mutex
	lines []string
}

func (l *lockedOut) add(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

func (l *lockedOut) find(prefix string, after time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()

	for _, s := range l.lines {
		if !strings.HasPrefix(s, prefix) {
			continue
		}

		var ns int64

		fmt.Sscanf(strings.TrimPrefix(s, prefix), " %d", &ns) //nolint:errcheck

		if after.IsZero() || time.Unix(0, ns).After(after) {
			return true
		}
	}

	return false
}

func (l *lockedOut) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()

	return strings.Join(l.lines, "\n")
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()

	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
}

func startIn(t *testing.T, ns string, env []string, out *lockedOut) *exec.Cmd {
	t.Helper()

	exe, err := os.Executable()
	require.NoError(t, err)

	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)

	pipe, err := cmd.StdoutPipe()
	require.NoError(t, err)

	cmd.Stderr = cmd.Stdout

	require.NoError(t, cmd.Start())

	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			out.add(sc.Text())
		}
	}()

	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		cmd.Wait()                          //nolint:errcheck
	})

	return cmd
}

// A hub and a node in two network namespaces joined by a veth pair: the
// node enrolls and its WireGuard link runs over real UDP; the hub
// restarts and the node's link comes back by itself.
func TestUDPBetweenNetworkNamespaces(t *testing.T) {
	needRoot(t)

	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (iproute2) is not installed; hack/install-deps.sh installs it")
	}

	id := os.Getpid() % 100000
	hubNS, peerNS := fmt.Sprintf("lfhub%d", id), fmt.Sprintf("lfnode%d", id)

	ipCmd(t, "netns", "add", hubNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", hubNS).Run() }) //nolint:errcheck
	ipCmd(t, "netns", "add", peerNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", peerNS).Run() }) //nolint:errcheck

	ipCmd(t, "link", "add", "lfvh", "netns", hubNS, "type", "veth", "peer", "name", "lfvn", "netns", peerNS)
	ipCmd(t, "-n", hubNS, "addr", "add", "10.231.0.1/24", "dev", "lfvh")
	ipCmd(t, "-n", peerNS, "addr", "add", "10.231.0.2/24", "dev", "lfvn")

	for _, nsLink := range [][2]string{{hubNS, "lfvh"}, {peerNS, "lfvn"}, {hubNS, "lo"}, {peerNS, "lo"}} {
		ipCmd(t, "-n", nsLink[0], "link", "set", nsLink[1], "up")
	}

	db := filepath.Join(t.TempDir(), "fleet.db")

	st, err := store.Open(db, store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	reg := registry.New(st.DB())
	secret, _, err := reg.CreateToken(context.Background(), "netns-site", "test")
	require.NoError(t, err)

	cfg := hub.Defaults()
	cfg.APIListen = "10.231.0.1:8099"
	cfg.WireGuardListen = "10.231.0.1:50180"

	cfgJSON, err := json.Marshal(cfg)
	require.NoError(t, err)

	hubEnv := []string{"LF_NETNS_ROLE=hub", "LF_DB=" + db, "LF_HUB_CONFIG=" + string(cfgJSON)}

	hubOut := &lockedOut{}
	hubProc := startIn(t, hubNS, hubEnv, hubOut)

	waitOut := func(what string, out *lockedOut, cond func() bool) {
		t.Helper()

		deadline := time.Now().Add(40 * time.Second)
		for time.Now().Before(deadline) {
			if cond() {
				return
			}

			time.Sleep(100 * time.Millisecond)
		}

		t.Fatalf("timed out waiting for %s\nhub:\n%s\nnode:\n%s", what, hubOut, out)
	}

	peerOut := &lockedOut{}
	waitOut("hub serving", peerOut, func() bool { return strings.Contains(hubOut.String(), `msg="hub serving"`) })

	startIn(t, peerNS, []string{"LF_NETNS_ROLE=peer", "LF_API=10.231.0.1:8099", "LF_TOKEN=" + secret, "LF_UUID=uuid-netns"}, peerOut)

	waitOut("the node's link carries pings", peerOut, func() bool { return peerOut.find("PING-OK", time.Time{}) })
	require.True(t, peerOut.find("PEER-PROVISIONED 10.231.0.1:50180", time.Time{}), "the node was told the hub's UDP endpoint on the veth:\n%s", peerOut)

	waitOut("the node's event stored", peerOut, func() bool {
		evs, _ := reg.Events(context.Background(), "uuid-netns", 0)

		return len(evs) == 1
	})

	m, err := reg.Machine(context.Background(), "uuid-netns")
	require.NoError(t, err)
	require.Equal(t, registry.TransportUDP, m.Transport)
	require.Equal(t, "netns-site", m.Site)

	// Restart the hub; the node reconnects by itself.
	require.NoError(t, hubProc.Process.Signal(syscall.SIGTERM))
	require.NoError(t, hubProc.Wait(), "graceful stop:\n%s", hubOut)

	restarted := time.Now()
	hubOut2 := &lockedOut{}
	startIn(t, hubNS, hubEnv, hubOut2)
	waitOut("the node's link is back after the hub restarted", peerOut, func() bool { return peerOut.find("PING-OK", restarted) })

	// Token rotation: the old token is refused from the site, the new one
	// enrolls, and the node enrolled before keeps its link.
	newSecret, _, _, err := reg.RotateToken(context.Background(), "netns-site", "test")
	require.NoError(t, err)

	lateOut := &lockedOut{}
	startIn(t, peerNS, []string{"LF_NETNS_ROLE=peer", "LF_API=10.231.0.1:8099", "LF_TOKEN=" + secret, "LF_UUID=uuid-netns-late"}, lateOut)
	waitOut("the old token refused", lateOut, func() bool { return lateOut.find("PEER-ERROR", time.Time{}) })
	require.Contains(t, lateOut.String(), "join token revoked")

	newOut := &lockedOut{}
	startIn(t, peerNS, []string{"LF_NETNS_ROLE=peer", "LF_API=10.231.0.1:8099", "LF_TOKEN=" + newSecret, "LF_UUID=uuid-netns-new"}, newOut)
	waitOut("a node with the new token linked", newOut, func() bool { return newOut.find("PING-OK", time.Time{}) })

	rotated := time.Now()
	waitOut("the first node's link undisturbed", peerOut, func() bool { return peerOut.find("PING-OK", rotated) })
}
