package siderolink_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
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
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/lab/labos/siderolink"
)

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

var seq atomic.Int32

// hubEnv is the real hub (fleetctl/hub) in-process, on its own TUN device.
type hubEnv struct {
	t    *testing.T
	cfg  hub.Config
	db   string
	st   *store.Store
	reg  *registry.Registry
	logs *syncBuf
	h    *hub.Hub
	stop func()
}

func freePort(t *testing.T, network string) int {
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

func newHub(t *testing.T) *hubEnv {
	t.Helper()

	if os.Geteuid() != 0 {
		t.Skip("skipped: the hub's TUN device needs root (CAP_NET_ADMIN); CI runs as root")
	}

	n := seq.Add(1)
	cfg := hub.Defaults()
	cfg.Interface = fmt.Sprintf("lfsl%d%d", os.Getpid()%10000, n)
	cfg.Prefix = fmt.Sprintf("fd%02x:%04x:%04x::/64", 0x80+n, os.Getpid()&0xffff, time.Now().UnixNano()&0xffff)
	cfg.APIListen = fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	cfg.WireGuardListen = fmt.Sprintf("127.0.0.1:%d", freePort(t, "udp"))
	cfg.ConfigDir = t.TempDir()

	e := &hubEnv{t: t, cfg: cfg, db: filepath.Join(t.TempDir(), "fleet.db"), logs: &syncBuf{}}
	st, err := store.Open(e.db, store.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)

	e.st, e.reg = st, registry.New(st.DB())
	e.start()
	t.Cleanup(func() {
		e.stop()
		e.st.Close()
	})

	return e
}

func (e *hubEnv) start() {
	e.t.Helper()

	h, err := hub.New(e.cfg, e.reg, slog.New(slog.NewTextHandler(e.logs, nil)), hub.Options{ReconcileEvery: 200 * time.Millisecond})
	require.NoError(e.t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() { done <- h.Run(ctx) }()

	select {
	case <-h.Ready():
	case err := <-done:
		e.t.Fatalf("hub did not start: %v\n%s", err, e.logs)
	case <-time.After(20 * time.Second):
		e.t.Fatalf("hub did not start\n%s", e.logs)
	}

	e.h = h
	e.stop = func() {
		if cancel == nil {
			return
		}

		cancel()
		cancel = nil

		select {
		case err := <-done:
			assert.NoError(e.t, err)
		case <-time.After(20 * time.Second):
			e.t.Error("hub did not stop")
		}
	}
}

// settings are what imagectl bakes for this hub, parsed as labos parses
// the kernel command line.
func (e *hubEnv) settings(t *testing.T, token string, tunnel bool) siderolink.Settings {
	t.Helper()

	api := "grpc://" + e.cfg.APIListen + "?jointoken=" + token
	if tunnel {
		api += "&grpc_tunnel=true"
	}

	srv := e.h.ServerAddress()
	s, ok, err := siderolink.FromCmdline(map[string]string{
		siderolink.ParamAPI:           api,
		siderolink.ParamEventsSink:    netip.AddrPortFrom(srv, uint16(e.cfg.EventSinkPort)).String(),
		siderolink.ParamLoggingKernel: "tcp://" + netip.AddrPortFrom(srv, uint16(e.cfg.LogReceiverPort)).String(),
	})
	require.NoError(t, err)
	require.True(t, ok)

	return s
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
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

func runLink(t *testing.T, o siderolink.Options) *siderolink.Link {
	t.Helper()

	l, err := siderolink.New(o)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})

	go func() {
		l.Run(ctx) //nolint:errcheck
		close(done)
	}()

	t.Cleanup(func() {
		cancel()
		<-done
	})

	return l
}

// serveEcho serves a line echo on the node's tunnel address (standing in
// for the machine API on :50000) and checks that the hub's host reaches it
// through the link, as fleetctl's driver will.
func serveAndReach(t *testing.T, l *siderolink.Link) {
	t.Helper()

	lis, err := l.Stack().Listen(netip.AddrPortFrom(l.Addr(), 50000))
	require.NoError(t, err)
	t.Cleanup(func() { lis.Close() })

	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}

			go func() {
				defer c.Close()
				io.Copy(c, c) //nolint:errcheck
			}()
		}
	}()

	var c net.Conn

	eventually(t, 20*time.Second, "the hub's host dials the node's tunnel address", func() bool {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(l.Addr(), 50000).String(), 2*time.Second)

		return err == nil
	})
	defer c.Close()

	_, err = io.WriteString(c, "hello node\n")
	require.NoError(t, err)

	buf := make([]byte, 11)
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "hello node\n", string(buf))
}

func testEnroll(t *testing.T, tunnel bool, transport string) {
	e := newHub(t)
	ctx := context.Background()

	secret, _, err := e.reg.CreateToken(ctx, "berlin", "test")
	require.NoError(t, err)

	logs := &syncBuf{}
	uuid := fmt.Sprintf("1b4e28ba-2fa1-11d2-883f-0016d3cca4%02d", seq.Add(1))
	l := runLink(t, siderolink.Options{Settings: e.settings(t, secret, tunnel), UUID: uuid, UniqueToken: "u-1",
		Log: slog.New(slog.NewTextHandler(logs, nil)), Keepalive: time.Second})

	select {
	case <-l.Up():
	case <-time.After(30 * time.Second):
		t.Fatalf("link not up: %v\nhub log:\n%s", l.LastError(), e.logs)
	}

	m, err := e.reg.Machine(ctx, uuid)
	require.NoError(t, err)
	assert.Equal(t, "berlin", m.Site)
	assert.Equal(t, transport, m.Transport)
	assert.Equal(t, l.Addr().String(), m.TunnelAddress)
	assert.Equal(t, "v1.14.1", m.TalosVersion)

	serveAndReach(t, l)

	require.NoError(t, l.Publish(ctx, "ev-1", &machineapi.MachineStatusEvent{Stage: machineapi.MachineStatusEvent_MAINTENANCE}))
	require.NoError(t, l.SendReport(ctx, siderolink.Report{ImageVersion: "lab-1.2.3", SecureBoot: "enabled", DiskEncryption: "tpm"}))

	kmsg := strings.NewReader("6,101,2000000,-;wireguard: WireGuard secure network tunnel\n SUBSYSTEM=net\n4,102,2100000,-;labos: hello from the kernel\n")
	require.NoError(t, l.ForwardKernelLog(ctx, kmsg))

	eventually(t, 10*time.Second, "event, kernel log and report recorded", func() bool {
		evs, _ := e.reg.Events(ctx, uuid, 0)
		lines, _ := e.reg.Logs(ctx, uuid, 0, 0)
		m, _ := e.reg.Machine(ctx, uuid)

		return len(evs) == 1 && len(lines) == 2 && m.ImageVersion == "lab-1.2.3"
	})

	evs, _ := e.reg.Events(ctx, uuid, 0)
	assert.Equal(t, "machine.MachineStatusEvent", evs[0].Type)

	lines, _ := e.reg.Logs(ctx, uuid, 0, 0)
	assert.Contains(t, lines[1].Line, "hello from the kernel")

	m, _ = e.reg.Machine(ctx, uuid)
	assert.Equal(t, "enabled", m.SecureBoot)
	assert.Equal(t, "tpm", m.DiskEncryption)

	assert.NotContains(t, logs.String(), secret, "labos never logs the join token")

	// The hub restarts: the node's link comes back by itself (the hub keeps
	// its peers; keepalives and the gRPC relay's redial do the rest).
	e.stop()
	restarted := time.Now()
	e.start()

	eventually(t, 30*time.Second, "a handshake after the hub restarted", func() bool { return l.LastHandshake().After(restarted) })
	require.NoError(t, l.Publish(ctx, "ev-2", &machineapi.MachineStatusEvent{Stage: machineapi.MachineStatusEvent_RUNNING}))
	eventually(t, 10*time.Second, "the event after the restart", func() bool {
		evs, _ := e.reg.Events(ctx, uuid, 0)

		return len(evs) == 2
	})
}

// labos enrolls at the real hub over the gRPC tunnel (UDP blocked): the
// registry has it, the hub's host reaches its tunnel address, its event,
// kernel log and report land, and it reconnects after a hub restart.
func TestEnrollGRPCTunnel(t *testing.T) { testEnroll(t, true, registry.TransportGRPC) }

// The same over WireGuard's own UDP.
func TestEnrollUDP(t *testing.T) { testEnroll(t, false, registry.TransportUDP) }

// A revoked token: labos keeps retrying, never gets a link, and its
// LastError carries the hub's reason (never the token).
func TestRevokedTokenReason(t *testing.T) {
	e := newHub(t)
	ctx := context.Background()

	secret, tok, err := e.reg.CreateToken(ctx, "munich", "test")
	require.NoError(t, err)
	require.NoError(t, e.reg.RevokeToken(ctx, tok.ID, "site closed"))

	l := runLink(t, siderolink.Options{Settings: e.settings(t, secret, true), UUID: "uuid-revoked", UniqueToken: "u", MaxBackoff: time.Second})

	eventually(t, 10*time.Second, "two refused provisioning attempts", func() bool { return l.LastError() != nil })

	err = l.LastError()
	assert.Equal(t, codes.PermissionDenied, status.Code(err))
	assert.Contains(t, err.Error(), "join token revoked")
	assert.NotContains(t, err.Error(), secret)

	select {
	case <-l.Up():
		t.Fatal("a node with a revoked token got a link")
	default:
	}
}
