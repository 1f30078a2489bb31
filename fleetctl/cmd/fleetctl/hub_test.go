package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
)

type lockedLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *lockedLines) collect(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		l.mu.Unlock()
	}
}

func (l *lockedLines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()

	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}

	return false
}

func (l *lockedLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()

	return strings.Join(l.lines, "\n")
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
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

func freeTCP(t *testing.T) int {
	t.Helper()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()

	return l.Addr().(*net.TCPAddr).Port
}

// The operator's view end to end: a token made with the CLI, the hub as a
// process, a node enrolling over the gRPC tunnel, its events and logs read
// back with the CLI (text and -o json), accept, and a graceful SIGTERM.
func TestHubCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: fleetctl hub creates a TUN device, which needs root (CAP_NET_ADMIN); CI runs as root")
	}

	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(t.TempDir(), "fleet.db")}

	out, code := c.stdout("hub", "token", "create", "berlin", "-o", "json")
	require.Equal(t, 0, code, out)

	var tok struct {
		ID, Site, Secret, KernelArgs string
	}
	require.NoError(t, json.Unmarshal([]byte(out), &tok))
	assert.Equal(t, "berlin", tok.Site)
	assert.Contains(t, tok.KernelArgs, "siderolink.api=grpc://HUB:8099?jointoken="+tok.Secret)

	out, code = c.run("hub", "token", "ls")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, tok.ID)
	assert.NotContains(t, out, tok.Secret, "ls never shows a secret")

	api := fmt.Sprintf("127.0.0.1:%d", freeTCP(t))
	hubCmd := c.cmd("hub", "--api-listen", api, "--wireguard-listen", "127.0.0.1:0",
		"--interface", fmt.Sprintf("lfcli%d", os.Getpid()%100000), "--prefix", fmt.Sprintf("fd7e:%x:1::/64", os.Getpid()&0xffff))

	stderr, err := hubCmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, hubCmd.Start())

	var logs lockedLines

	go logs.collect(stderr)

	t.Cleanup(func() { hubCmd.Process.Kill() }) //nolint:errcheck

	waitFor(t, 30*time.Second, "hub serving", func() bool { return logs.has(`msg="hub serving"`) })

	ctx := context.Background()
	p, err := simpeer.Connect(ctx, simpeer.Options{API: api, JoinToken: tok.Secret, UUID: "uuid-cli", UniqueToken: "x", Tunnel: true, Keepalive: time.Second, TalosVersion: "v1.14.1"})
	require.NoError(t, err, logs.String())
	t.Cleanup(p.Close)

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, p.WaitHandshake(wctx, time.Time{}))

	require.NoError(t, p.SendEvent(ctx, 8090, "e1", &machineapi.SequenceEvent{Sequence: "boot", Action: machineapi.SequenceEvent_START}))
	require.NoError(t, p.SendLogs(ctx, 8092, `{"msg":"first line"}`))

	waitFor(t, 10*time.Second, "events stored", func() bool {
		out, _ := c.run("events", "uuid-cli")

		return strings.Contains(out, "machine.SequenceEvent")
	})

	out, code = c.stdout("machines", "ls", "-o", "json")
	require.Equal(t, 0, code, out)

	var ms []registry.Machine
	require.NoError(t, json.Unmarshal([]byte(out), &ms))
	require.Len(t, ms, 1)
	assert.Equal(t, "uuid-cli", ms[0].UUID)
	assert.Equal(t, p.Addr.String(), ms[0].TunnelAddress)

	out, code = c.run("machines", "show", p.Addr.String())
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "uuid-cli")
	assert.Contains(t, out, "machine.SequenceEvent")

	out, code = c.stdout("events", "uuid-cli", "-o", "json")
	require.Equal(t, 0, code, out)

	var evs []registry.Event
	require.NoError(t, json.Unmarshal([]byte(out), &evs))
	require.Len(t, evs, 1)

	waitFor(t, 10*time.Second, "log stored", func() bool {
		out, _ := c.run("logs", "uuid-cli")

		return strings.Contains(out, "first line")
	})

	// --follow prints lines that arrive later.
	follow := c.cmd("logs", "uuid-cli", "--follow")
	fout, err := follow.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, follow.Start())

	var followed lockedLines

	go followed.collect(fout)

	require.NoError(t, p.SendLogs(ctx, 8092, `{"msg":"second line"}`))
	waitFor(t, 10*time.Second, "followed line", func() bool { return followed.has("second line") })
	follow.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	follow.Wait()                          //nolint:errcheck

	out, code = c.run("machines", "accept", "uuid-cli", "--cluster", "c1", "--role", "worker")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "accepted uuid-cli into c1 as worker")

	out, code = c.run("machines", "accept", "uuid-nope", "--cluster", "c1", "--role", "worker")
	assert.Equal(t, ExitBadInput, code)
	assert.Contains(t, out, "machine uuid-nope: not found")

	out, code = c.run("logs", "uuid-nope")
	assert.Equal(t, ExitBadInput, code)
	assert.Contains(t, out, "machine uuid-nope: not found")

	require.NoError(t, hubCmd.Process.Signal(syscall.SIGTERM))

	done := make(chan error, 1)
	go func() { done <- hubCmd.Wait() }()

	select {
	case err := <-done:
		require.NoError(t, err, "graceful shutdown exits 0; log:\n%s", logs.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("hub did not stop on SIGTERM; log:\n%s", logs.String())
	}

	assert.True(t, logs.has(`msg="hub stopped"`))
	assert.False(t, logs.has(tok.Secret), "the join token never appears in the hub's log")
}

func TestHubBadConfigExitCode(t *testing.T) {
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(t.TempDir(), "fleet.db")}

	out, code := c.run("hub", "--prefix", "10.0.0.0/8", "--api-listen", ":99999")
	assert.Equal(t, ExitBadInput, code)
	assert.Contains(t, out, `apiListen: ":99999": port "99999" is not 1-65535`)
	assert.Contains(t, out, "prefix: 10.0.0.0/8 is not IPv6")
}

// kill -9 of the hub: nodes on both transports get their links back from a
// new hub process by themselves, without enrolling again (the hub's key,
// the peers and their last endpoints are in the database, written as they
// are learnt, not only at a graceful stop).
func TestHubKill9NodesReconnect(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: fleetctl hub creates a TUN device, which needs root (CAP_NET_ADMIN); CI runs as root")
	}

	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(t.TempDir(), "fleet.db")}

	out, code := c.stdout("hub", "token", "create", "berlin", "-o", "json")
	require.Equal(t, 0, code, out)

	var tok struct{ Secret string }
	require.NoError(t, json.Unmarshal([]byte(out), &tok))

	api := fmt.Sprintf("127.0.0.1:%d", freeTCP(t))

	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)

	wg := l.LocalAddr().String()
	l.Close()

	start := func() (*lockedLines, func(sig syscall.Signal)) {
		cmd := c.cmd("hub", "--api-listen", api, "--wireguard-listen", wg,
			"--interface", fmt.Sprintf("lfk9%d", os.Getpid()%100000), "--prefix", fmt.Sprintf("fd7f:%x:2::/64", os.Getpid()&0xffff))

		stderr, err := cmd.StderrPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())

		logs := &lockedLines{}

		go logs.collect(stderr)

		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck

		waitFor(t, 30*time.Second, "hub serving", func() bool { return logs.has(`msg="hub serving"`) })

		return logs, func(sig syscall.Signal) {
			cmd.Process.Signal(sig) //nolint:errcheck
			cmd.Wait()              //nolint:errcheck
		}
	}

	logs, stop := start()

	ctx := context.Background()

	var peers []*simpeer.Peer

	for _, tunnel := range []bool{true, false} {
		p, err := simpeer.Connect(ctx, simpeer.Options{API: api, JoinToken: tok.Secret, UUID: fmt.Sprintf("uuid-k9-%v", tunnel),
			UniqueToken: fmt.Sprint(tunnel), Tunnel: tunnel, Keepalive: time.Second})
		require.NoError(t, err, logs.String())
		t.Cleanup(p.Close)

		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		require.NoError(t, p.WaitHandshake(wctx, time.Time{}))
		cancel()

		peers = append(peers, p)
	}

	// The hub records where it hears each node from every few seconds.
	waitFor(t, 20*time.Second, "endpoints recorded", func() bool {
		out, _ := c.stdout("machines", "ls", "-o", "json")

		var ms []registry.Machine
		if json.Unmarshal([]byte(out), &ms) != nil || len(ms) != 2 {
			return false
		}

		return ms[0].Endpoint != "" && ms[1].Endpoint != ""
	})

	stop(syscall.SIGKILL)

	killed := time.Now()
	logs2, stop2 := start()

	assert.True(t, logs2.has("restored_peers=2"), logs2.String())

	for _, p := range peers {
		wctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		require.NoError(t, p.WaitHandshake(wctx, killed), "hub log:\n%s", logs2.String())
		cancel()

		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		require.NoError(t, p.Ping(pctx))
		cancel()
	}

	assert.False(t, logs2.has(`msg="machine enrolled"`), "nodes came back without enrolling again")

	stop2(syscall.SIGTERM)
}
