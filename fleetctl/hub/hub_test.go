package hub_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// needRoot skips tests that create TUN devices (and network namespaces).
func needRoot(t testing.TB) {
	t.Helper()

	if os.Geteuid() != 0 {
		t.Skip("skipped: creating the hub's TUN device needs root (CAP_NET_ADMIN); CI runs as root")
	}
}

// syncBuf collects log output from several goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.b.String()
}

var ifaceSeq atomic.Int32

// env is one hub on its own TUN device and prefix, with its store.
type env struct {
	t      testing.TB
	dbPath string
	cfg    hub.Config
	opts   hub.Options
	reg    *registry.Registry
	st     *store.Store
	logs   *syncBuf

	h      *hub.Hub
	cancel context.CancelFunc
	done   chan error
}

func freePort(t testing.TB, network string) int {
	t.Helper()

	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		defer c.Close()

		return c.LocalAddr().(*net.UDPAddr).Port
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()

	return l.Addr().(*net.TCPAddr).Port
}

func newEnv(t testing.TB, mutate func(*hub.Config)) *env {
	t.Helper()
	needRoot(t)

	n := ifaceSeq.Add(1)
	cfg := hub.Defaults()
	cfg.Interface = fmt.Sprintf("lfht%d%d", os.Getpid()%10000, n)
	cfg.Prefix = fmt.Sprintf("fd%02x:%04x:%04x::/64", n, os.Getpid()&0xffff, time.Now().UnixNano()&0xffff)
	cfg.APIListen = fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	cfg.WireGuardListen = fmt.Sprintf("127.0.0.1:%d", freePort(t, "udp"))
	cfg.ConfigDir = t.TempDir()

	if mutate != nil {
		mutate(&cfg)
	}

	e := &env{t: t, dbPath: filepath.Join(t.TempDir(), "fleet.db"), cfg: cfg, logs: &syncBuf{},
		opts: hub.Options{ReconcileEvery: 200 * time.Millisecond}}
	e.openStore()
	e.start()
	t.Cleanup(func() {
		e.stop()
		e.st.Close()
	})

	return e
}

func (e *env) openStore() {
	st, err := store.Open(e.dbPath, store.Options{Synchronous: "NORMAL"})
	require.NoError(e.t, err)

	e.st = st
	e.reg = registry.New(st.DB())
}

func (e *env) start() {
	e.t.Helper()

	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	h, err := hub.New(e.cfg, e.reg, log, e.opts)
	require.NoError(e.t, err)

	ctx, cancel := context.WithCancel(context.Background())
	e.h, e.cancel, e.done = h, cancel, make(chan error, 1)

	go func() { e.done <- h.Run(ctx) }()

	select {
	case <-h.Ready():
	case err := <-e.done:
		e.t.Fatalf("hub did not start: %v\n%s", err, e.logs)
	case <-time.After(20 * time.Second):
		e.t.Fatalf("hub did not start in 20s\n%s", e.logs)
	}
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}

	e.cancel()

	select {
	case err := <-e.done:
		assert.NoError(e.t, err)
	case <-time.After(20 * time.Second):
		e.t.Errorf("hub did not stop in 20s")
	}

	e.cancel = nil
}

func (e *env) token(site string) string {
	secret, _, err := e.reg.CreateToken(context.Background(), site, "test")
	require.NoError(e.t, err)

	return secret
}

func (e *env) peer(ctx context.Context, o simpeer.Options) *simpeer.Peer {
	e.t.Helper()

	o.API = e.cfg.APIListen
	if o.TalosVersion == "" {
		o.TalosVersion = "v1.14.1"
	}

	if o.Keepalive == 0 {
		o.Keepalive = time.Second
	}

	p, err := simpeer.Connect(ctx, o)
	require.NoError(e.t, err, "hub log:\n%s", e.logs)
	e.t.Cleanup(p.Close)

	return p
}

func (e *env) waitLog(substr string, timeout time.Duration) {
	e.t.Helper()

	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(e.logs.String(), substr) {
			return
		}

		time.Sleep(50 * time.Millisecond)
	}

	e.t.Fatalf("hub never logged %q; log:\n%s", substr, e.logs)
}

func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()

	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}

		time.Sleep(50 * time.Millisecond)
	}

	t.Fatalf("timed out waiting for %s", what)
}

func linkUp(t testing.TB, ctx context.Context, p *simpeer.Peer) {
	linkUpE(t, nil, ctx, p)
}

func (e *env) linkUp(ctx context.Context, p *simpeer.Peer) { linkUpE(e.t, e, ctx, p) }

func linkUpE(t testing.TB, e *env, ctx context.Context, p *simpeer.Peer) {
	t.Helper()

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	require.NoError(t, p.WaitHandshake(wctx, time.Time{}))

	pctx, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()

	if err := p.Ping(pctx); err != nil {
		addrs, _ := exec.Command("ip", "-6", "addr", "show").CombinedOutput()
		route, _ := exec.Command("ip", "-6", "route", "get", p.Addr.String()).CombinedOutput()
		var up any
		if e != nil {
			up, _ = e.h.PeersUp()
		}

		t.Fatalf("ping the hub through the tunnel: %v\nip -6 addr:\n%s\nroute to node:\n%s\npeer: %s\nhub peers: %+v", err, addrs, route, p.Stats(), up)
	}
}

// A node enrolls over the gRPC tunnel (UDP blocked), its link carries
// traffic, its events, logs and report land in the registry.
func TestEnrollOverGRPCTunnelEventsAndLogs(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()

	p := e.peer(ctx, simpeer.Options{JoinToken: e.token("berlin"), UUID: "uuid-grpc-1", UniqueToken: "u1", Tunnel: true})
	e.linkUp(ctx, p)

	m, err := e.reg.Machine(ctx, "uuid-grpc-1")
	require.NoError(t, err)
	assert.Equal(t, "berlin", m.Site)
	assert.Equal(t, registry.TransportGRPC, m.Transport)
	assert.Equal(t, p.Addr.String(), m.TunnelAddress)
	assert.Equal(t, "v1.14.1", m.TalosVersion)
	assert.Equal(t, registry.StatePending, m.State)

	require.NoError(t, p.SendEvent(ctx, e.cfg.EventSinkPort, "ev1", &machineapi.MachineStatusEvent{Stage: machineapi.MachineStatusEvent_MAINTENANCE}))
	require.NoError(t, p.SendLogs(ctx, e.cfg.LogReceiverPort,
		`{"msg":"[talos] hello from the kernel","talos-level":"info"}`,
		`{"labfleet-report":{"imageVersion":"lab-2026.11","secureBoot":"enabled","diskEncryption":"tpm"}}`))

	eventually(t, 10*time.Second, "event and log stored", func() bool {
		evs, _ := e.reg.Events(ctx, "uuid-grpc-1", 0)
		logs, _ := e.reg.Logs(ctx, "uuid-grpc-1", 0, 0)

		return len(evs) == 1 && len(logs) == 1
	})

	evs, _ := e.reg.Events(ctx, "uuid-grpc-1", 0)
	assert.Equal(t, "machine.MachineStatusEvent", evs[0].Type)
	assert.Contains(t, evs[0].Payload, "MAINTENANCE")

	logs, _ := e.reg.Logs(ctx, "uuid-grpc-1", 0, 0)
	assert.Contains(t, logs[0].Line, "hello from the kernel")

	m, err = e.reg.Machine(ctx, "uuid-grpc-1")
	require.NoError(t, err)
	assert.Equal(t, "lab-2026.11", m.ImageVersion)
	assert.Equal(t, "enabled", m.SecureBoot)
	assert.Equal(t, "tpm", m.DiskEncryption)
}

// A node enrolls over UDP (loopback) and its link carries traffic.
func TestEnrollOverUDP(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()

	p := e.peer(ctx, simpeer.Options{JoinToken: e.token("berlin"), UUID: "uuid-udp-1", UniqueToken: "u1"})
	e.linkUp(ctx, p)

	m, err := e.reg.Machine(ctx, "uuid-udp-1")
	require.NoError(t, err)
	assert.Equal(t, registry.TransportUDP, m.Transport)
}

// Bad input: unknown and revoked tokens are refused with the reason, named
// in the hub's log with the machine; nothing is recorded for them, and an
// enrolled machine's link keeps working throughout.
func TestTokensRefusedOthersUndisturbed(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()

	good := e.peer(ctx, simpeer.Options{JoinToken: e.token("berlin"), UUID: "uuid-good", UniqueToken: "g", Tunnel: true})
	e.linkUp(ctx, good)

	_, err := simpeer.Connect(ctx, simpeer.Options{API: e.cfg.APIListen, JoinToken: "lfj_guessed", UUID: "uuid-unknown-token"})
	require.Error(t, err)
	assert.Equal(t, codes.PermissionDenied, status.Code(err))
	assert.Contains(t, err.Error(), "join token refused: unknown join token")
	e.waitLog(`msg="enrollment refused" machine=uuid-unknown-token`, 5*time.Second)

	secret, tok, err := e.reg.CreateToken(ctx, "munich", "test")
	require.NoError(t, err)
	require.NoError(t, e.reg.RevokeToken(ctx, tok.ID, "site closed"))

	_, err = simpeer.Connect(ctx, simpeer.Options{API: e.cfg.APIListen, JoinToken: secret, UUID: "uuid-revoked-token"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "join token revoked: token "+tok.ID+" of site munich (site closed)")
	e.waitLog(`machine=uuid-revoked-token`, 5*time.Second)
	assert.NotContains(t, e.logs.String(), secret, "a join token never appears in the log")

	_, err = e.reg.Machine(ctx, "uuid-revoked-token")
	require.ErrorIs(t, err, registry.ErrNotFound)

	require.NoError(t, good.Ping(ctx), "the enrolled machine's link is undisturbed")
}

// Bad input: a second machine with an enrolled machine's UUID is refused,
// naming the UUID and the reason; the first keeps its link and record.
func TestDuplicateUUIDRefused(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tok := e.token("berlin")

	first := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-dup", UniqueToken: "machine-a", Tunnel: true})
	e.linkUp(ctx, first)

	_, err := simpeer.Connect(ctx, simpeer.Options{API: e.cfg.APIListen, JoinToken: tok, UUID: "uuid-dup", UniqueToken: "machine-b", Tunnel: true})
	require.Error(t, err)
	assert.Equal(t, codes.AlreadyExists, status.Code(err))
	assert.Contains(t, err.Error(), "machine uuid-dup: duplicate machine UUID")
	e.waitLog(`msg="enrollment refused" machine=uuid-dup`, 5*time.Second)

	m, err := e.reg.Machine(ctx, "uuid-dup")
	require.NoError(t, err)
	assert.Equal(t, first.PublicKey().String(), m.PublicKey)
	require.NoError(t, first.Ping(ctx), "the first machine keeps its link")
}

// Bad input: a node presenting an enrolled machine's WireGuard key (it
// cannot complete handshakes, but the hub would move the other machine's
// address to it) is refused; the owner keeps its link.
func TestStolenKeyRefused(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tok := e.token("berlin")

	owner := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-owner", UniqueToken: "o", Tunnel: true})
	e.linkUp(ctx, owner)

	_, err := simpeer.Provision(ctx, simpeer.Options{API: e.cfg.APIListen, JoinToken: tok, UUID: "uuid-thief", UniqueToken: "t"}, owner.PublicKey())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "machine uuid-thief: WireGuard public key already in use by machine uuid-owner")
	e.waitLog(`msg="enrollment refused" machine=uuid-thief`, 5*time.Second)

	require.NoError(t, owner.Ping(ctx), "the owner keeps its link")
}

// Bad input: garbage on the gRPC tunnel ends that stream only, logged with
// the machine and the reason; another machine's link is undisturbed and
// the sender's record is kept.
func TestGarbageOnTunnel(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tok := e.token("berlin")

	good := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-good", UniqueToken: "g", Tunnel: true})
	e.linkUp(ctx, good)

	bad := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-garbage", UniqueToken: "b", Tunnel: true})
	e.linkUp(ctx, bad)

	// A stream with an unknown virtual address is refused.
	err := simpeer.SendRaw(ctx, e.cfg.APIListen, "[fd00::dead]:50888", []byte{1, 2, 3})
	require.Error(t, err)
	e.waitLog(`msg="tunnel stream refused" machine=unknown reason="no enrolled machine has virtual address fd00::dead`, 5*time.Second)

	// Garbage from an enrolled machine's virtual address.
	err = simpeer.SendRaw(ctx, e.cfg.APIListen, bad.Resp.GrpcPeerAddrPort, []byte("GET / HTTP/1.1\r\n\r\n"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "garbage on tunnel")
	e.waitLog(`msg="garbage on tunnel" machine=uuid-garbage reason="message type 71 is not WireGuard (1-4)"`, 5*time.Second)

	require.NoError(t, good.Ping(ctx), "another machine's link is undisturbed")

	_, err = e.reg.Machine(ctx, "uuid-garbage")
	require.NoError(t, err, "the sender's record is kept")

	all, err := e.reg.Machines(ctx)
	require.NoError(t, err)
	assert.Len(t, all, 2)
}

// The hub restarts; nodes on both transports reconnect by themselves
// (same hub key, peers restored from the registry) without enrolling again.
func TestReconnectAfterHubRestart(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tok := e.token("berlin")

	grpcPeer := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-r-grpc", UniqueToken: "a", Tunnel: true})
	udpPeer := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-r-udp", UniqueToken: "b"})
	e.linkUp(ctx, grpcPeer)
	e.linkUp(ctx, udpPeer)

	before := e.h.PublicKey()

	e.stop()

	restarted := time.Now()

	e.start()
	assert.Equal(t, before, e.h.PublicKey(), "the hub keeps its WireGuard key across restarts")
	e.waitLog("restored_peers=2", time.Second)

	for _, p := range []*simpeer.Peer{grpcPeer, udpPeer} {
		wctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		require.NoError(t, p.WaitHandshake(wctx, restarted), "hub log:\n%s", e.logs)
		cancel()

		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		require.NoError(t, p.Ping(pctx))
		cancel()
	}

	all, err := e.reg.Machines(ctx)
	require.NoError(t, err)
	assert.Len(t, all, 2)
}

// A node reboots (new WireGuard key, same unique token): it keeps its
// tunnel address and the old key is dropped.
func TestRebootKeepsAddress(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tok := e.token("berlin")

	p1 := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-reboot", UniqueToken: "same", Tunnel: true})
	e.linkUp(ctx, p1)
	p1.Close()

	p2 := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-reboot", UniqueToken: "same", Tunnel: true})
	e.linkUp(ctx, p2)
	assert.Equal(t, p1.Addr, p2.Addr)
}

// Token rotation: the old token stops working at once, the new one works,
// and machines enrolled with the old token keep their links.
func TestTokenRotation(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()

	old := e.token("berlin")
	enrolled := e.peer(ctx, simpeer.Options{JoinToken: old, UUID: "uuid-before", UniqueToken: "a", Tunnel: true})
	e.linkUp(ctx, enrolled)

	newSecret, _, revoked, err := e.reg.RotateToken(ctx, "berlin", "test")
	require.NoError(t, err)
	require.Len(t, revoked, 1)

	_, err = simpeer.Connect(ctx, simpeer.Options{API: e.cfg.APIListen, JoinToken: old, UUID: "uuid-late"})
	require.ErrorContains(t, err, "join token revoked")
	assert.Contains(t, err.Error(), "rotated to")

	after := e.peer(ctx, simpeer.Options{JoinToken: newSecret, UUID: "uuid-after", UniqueToken: "c", Tunnel: true})
	e.linkUp(ctx, after)

	require.NoError(t, enrolled.Ping(ctx), "machines enrolled with the old token keep their links")
}
