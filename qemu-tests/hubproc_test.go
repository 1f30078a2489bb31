package qemutests

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var (
	fleetctlOnce sync.Once
	fleetctlBin  string
	fleetctlErr  error
)

// fleetctlBinary builds fleetctl once for the scenarios that run it as an
// operator would: the hub and rollouts are separate processes that the
// test kills with SIGKILL.
func fleetctlBinary(t *testing.T) string {
	t.Helper()

	fleetctlOnce.Do(func() {
		fleetctlBin = filepath.Join(suite.Work, "bin", "fleetctl")

		cmd := exec.Command("go", "build", "-o", fleetctlBin, "./fleetctl/cmd/fleetctl")
		cmd.Dir = suite.Root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")

		if out, err := cmd.CombinedOutput(); err != nil {
			fleetctlErr = fmt.Errorf("building fleetctl: %w\n%s", err, out)
		}
	})

	require.NoError(t, fleetctlErr)

	return fleetctlBin
}

// fleetctl runs one fleetctl command against db and returns its output.
func fleetctl(ctx context.Context, t *testing.T, db string, args ...string) (string, error) {
	t.Helper()

	cmd := exec.CommandContext(ctx, fleetctlBinary(t), append([]string{"--db", db}, args...)...)
	out, err := cmd.CombinedOutput()

	return string(out), err
}

// hubProcess is `fleetctl hub` running as its own process, as in the field.
type hubProcess struct {
	t       *testing.T
	db, cfg string
	logPath string
	cmd     *exec.Cmd
	done    chan error
}

func (h *hubProcess) start(ctx context.Context) {
	h.t.Helper()

	logf, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(h.t, err)

	mark, _ := logf.Seek(0, io.SeekEnd)

	h.cmd = exec.Command(fleetctlBinary(h.t), "--db", h.db, "hub", "--config", h.cfg)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	require.NoError(h.t, h.cmd.Start())

	h.done = make(chan error, 1)

	go func() {
		h.done <- h.cmd.Wait()
		logf.Close()
	}()

	// ready when it logs "hub serving" after this start
	for {
		data, _ := os.ReadFile(h.logPath)
		if int64(len(data)) > mark && strings.Contains(string(data[mark:]), "hub serving") {
			return
		}

		select {
		case err := <-h.done:
			h.t.Fatalf("the hub exited while starting: %v (log: %s)", err, h.logPath)
		case <-ctx.Done():
			h.t.Fatalf("the hub did not start: %v (log: %s)", ctx.Err(), h.logPath)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stop is a graceful stop (SIGTERM); kill is SIGKILL, a crashed host.
func (h *hubProcess) stop() { h.signal(syscall.SIGTERM) }
func (h *hubProcess) kill() { h.signal(syscall.SIGKILL) }

func (h *hubProcess) signal(sig syscall.Signal) {
	if h.cmd == nil || h.cmd.Process == nil {
		return
	}

	_ = h.cmd.Process.Signal(sig)

	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.done
	}

	h.cmd = nil
}

func (h *hubProcess) log() string {
	data, _ := os.ReadFile(h.logPath)

	return string(data)
}

// waitLog waits until a hub log line holds every one of parts.
func (h *hubProcess) waitLog(ctx context.Context, what string, parts ...string) string {
	h.t.Helper()

	for {
		for _, l := range strings.Split(h.log(), "\n") {
			all := true

			for _, p := range parts {
				all = all && strings.Contains(l, p)
			}

			if all {
				return l
			}
		}

		select {
		case <-ctx.Done():
			h.t.Fatalf("the hub never logged %s (%q; log: %s)", what, parts, h.logPath)
		case <-time.After(time.Second):
		}
	}
}

// registryProxy serves the suite's registry on the hub's tunnel address:
// a node whose only way out is the hub pulls its upgrades from there (its
// configuration names the address as a registry mirror). The listener
// stays bound while the hub's TUN device comes and goes with restarts.
func registryProxy(t *testing.T, listen, target string) {
	t.Helper()

	l, err := net.Listen("tcp", listen)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })

	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}

			go func() {
				defer c.Close()

				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()

				go func() { _, _ = io.Copy(u, c) }()

				_, _ = io.Copy(c, u)
			}()
		}
	}()
}
