// Package swtpmtest starts a real swtpm for tests and connects go-tpm to it
// over TCP (swtpm's raw command channel, not the mssim framing go-tpm's tcp
// transport speaks).
package swtpmtest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// Conn is a raw TPM command connection to swtpm.
type Conn struct{ c net.Conn }

// Send writes one command and reads exactly one response (header size field).
func (c *Conn) Send(cmd []byte) ([]byte, error) {
	if _, err := c.c.Write(cmd); err != nil {
		return nil, fmt.Errorf("writing TPM command: %w", err)
	}

	hdr := make([]byte, 10)
	if _, err := io.ReadFull(c.c, hdr); err != nil {
		return nil, fmt.Errorf("reading TPM response: %w", err)
	}

	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > 1<<20 {
		return nil, fmt.Errorf("reading TPM response: bad size %d", size)
	}

	out := make([]byte, size)
	copy(out, hdr)

	if _, err := io.ReadFull(c.c, out[10:]); err != nil {
		return nil, fmt.Errorf("reading TPM response: %w", err)
	}

	return out, nil
}

var _ transport.TPM = (*Conn)(nil)

func freePort(t testing.TB) int {
	t.Helper()

	// two consecutive free ports: swtpm wants ctrl on another one
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}

		p := l.Addr().(*net.TCPAddr).Port
		l.Close() //nolint:errcheck

		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		if err == nil {
			l2.Close() //nolint:errcheck

			return p
		}
	}

	t.Fatal("no two consecutive free ports")

	return 0
}

// Start starts swtpm (state in a temp dir) and returns a connection; both
// are cleaned up when the test ends. Without swtpm the test fails in CI and
// is skipped elsewhere.
func Start(t testing.TB) *Conn {
	t.Helper()

	bin, err := exec.LookPath("swtpm")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("swtpm is required (apt-get install swtpm)")
		}

		t.Skip("swtpm not installed")
	}

	dir := t.TempDir()
	port := freePort(t)

	cmd := exec.Command(bin, "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+dir)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr

	if err := cmd.Start(); err != nil {
		t.Fatalf("starting swtpm: %v", err)
	}

	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})

	var c net.Conn

	for i := 0; ; i++ {
		c, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			break
		}

		if i > 100 {
			t.Fatalf("connecting to swtpm: %v", err)
		}

		time.Sleep(50 * time.Millisecond)
	}

	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return &Conn{c: c}
}
