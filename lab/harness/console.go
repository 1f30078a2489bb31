package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// consoleTail follows the console file QEMU writes and keeps its complete
// lines for waiters. Following a file (rather than a pipe) works the same
// for a VM this process started and for one started detached by another.
type consoleTail struct {
	path string

	mu      sync.Mutex
	lines   []string
	times   []time.Time   // when each line was read: boot timings come from these
	changed chan struct{} // closed and replaced whenever lines grow
	done    bool          // no more lines will come

	stopOnce sync.Once
	stopCh   chan struct{}
	stopped  chan struct{}
	sink     io.Writer
}

func newConsoleTail(path string, exited <-chan struct{}) *consoleTail {
	c := &consoleTail{
		path:    path,
		changed: make(chan struct{}),
		stopCh:  make(chan struct{}),
		stopped: make(chan struct{}),
	}

	go c.run(exited)

	return c
}

func (c *consoleTail) setSink(w io.Writer) {
	c.mu.Lock()
	c.sink = w
	c.mu.Unlock()
}

func (c *consoleTail) run(exited <-chan struct{}) {
	defer close(c.stopped)

	var (
		f       *os.File
		pending []byte
		buf     = make([]byte, 64<<10)
	)

	defer func() {
		if f != nil {
			f.Close() //nolint:errcheck
		}
	}()

	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()

	final := false

	for {
		if f == nil {
			f, _ = os.Open(c.path) //nolint:errcheck
		}

		if f != nil {
			for {
				n, err := f.Read(buf)
				if n > 0 {
					pending = append(pending, buf[:n]...)
					pending = c.addLines(pending)
				}

				if err != nil || n == 0 {
					break
				}
			}
		}

		if final {
			if len(pending) > 0 {
				c.addLines(append(pending, '\n'))
			}

			c.mu.Lock()
			c.done = true
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()

			return
		}

		select {
		case <-c.stopCh:
			final = true
		case <-exited:
			// One more read picks up what QEMU wrote before exiting.
			final = true
		case <-poll.C:
		}
	}
}

// addLines moves complete lines from data into c.lines, returning the rest.
func (c *consoleTail) addLines(data []byte) []byte {
	var added []string

	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}

		added = append(added, strings.TrimRight(string(data[:i]), "\r"))
		data = data[i+1:]
	}

	if len(added) == 0 {
		return data
	}

	now := time.Now()

	c.mu.Lock()
	c.lines = append(c.lines, added...)

	for range added {
		c.times = append(c.times, now)
	}

	if c.sink != nil {
		for _, l := range added {
			fmt.Fprintln(c.sink, l)
		}
	}

	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()

	return append([]byte(nil), data...)
}

func (c *consoleTail) stop() {
	c.stopOnce.Do(func() { close(c.stopCh) })
	<-c.stopped
}

// snapshot returns lines from index from on, whether the tail has ended,
// and a channel closed at the next change.
func (c *consoleTail) snapshot(from int) ([]string, bool, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if from > len(c.lines) {
		from = len(c.lines)
	}

	return c.lines[from:], c.done, c.changed
}

// Lines returns every complete console line so far.
func (vm *VM) Lines() []string {
	l, _, _ := vm.console.snapshot(0)

	return append([]string(nil), l...)
}

// TeeConsole copies every console line from now on to w (test logs, a
// terminal).
func (vm *VM) TeeConsole(w io.Writer) { vm.console.setSink(w) }

// WaitConsole waits for a console line matching re and returns it. Waits
// consume the console like expect: each wait looks only at lines after the
// one the previous successful wait matched, so successive waits follow the
// boot in order. It fails when ctx ends (default timeout Spec.WaitTimeout)
// or QEMU exits first, quoting the console's last lines.
func (vm *VM) WaitConsole(ctx context.Context, re *regexp.Regexp) (string, error) {
	line, _, err := vm.waitConsole(ctx, re)

	return line, err
}

// waitConsole is WaitConsole that also returns when the line was seen.
func (vm *VM) waitConsole(ctx context.Context, re *regexp.Regexp) (string, time.Time, error) {
	ctx, cancel := vm.withTimeout(ctx)
	defer cancel()

	vm.cursorMu.Lock()
	defer vm.cursorMu.Unlock()

	for {
		lines, done, changed := vm.console.snapshot(vm.cursor)

		for i, l := range lines {
			if re.MatchString(l) {
				vm.cursor += i + 1

				return l, vm.console.timeOf(vm.cursor - 1), nil
			}
		}

		vm.cursor += len(lines)

		if done {
			return "", time.Time{}, fmt.Errorf("waiting for %q on %s console: %w (%s)\n%s", re, vm.spec.Name, ErrExited, vm.exitDescription(), vm.consoleTailText(20))
		}

		select {
		case <-changed:
		case <-ctx.Done():
			return "", time.Time{}, fmt.Errorf("waiting for %q on %s console: %w\n%s", re, vm.spec.Name, ctx.Err(), vm.consoleTailText(20))
		}
	}
}

// WaitMarker waits for a labos console marker (nodeapi.Marker*) and
// returns its details ("LABOS: secureboot enabled=true" -> "enabled=true").
// It fails early when labos reports unlock-failed or unhealthy while
// waiting for another marker; the error carries the reason.
func (vm *VM) WaitMarker(ctx context.Context, marker string) (string, error) {
	details, _, err := vm.WaitMarkerAt(ctx, marker)

	return details, err
}

var markerRe = regexp.MustCompile(regexp.QuoteMeta(nodeapi.MarkerPrefix))

// WaitMarkerAt is WaitMarker that also returns when the marker appeared on
// the console (for boot timings: subtract StartedAt).
func (vm *VM) WaitMarkerAt(ctx context.Context, marker string) (string, time.Time, error) {
	for {
		line, at, err := vm.waitConsole(ctx, markerRe)
		if err != nil {
			return "", time.Time{}, fmt.Errorf("waiting for marker %s: %w", marker, err)
		}

		m, details, ok := nodeapi.ParseMarker(line)
		if !ok {
			continue
		}

		if m == marker {
			return details, at, nil
		}

		if (m == nodeapi.MarkerUnlockFailed || m == nodeapi.MarkerUnhealthy) && marker != nodeapi.MarkerStatus {
			return details, at, fmt.Errorf("waiting for marker %s: labos reported %s %s", marker, m, details)
		}
	}
}

// WaitStatus waits for the labos status marker and decodes it.
func (vm *VM) WaitStatus(ctx context.Context) (nodeapi.Status, error) {
	st, _, err := vm.waitStatusAt(ctx)

	return st, err
}

// waitStatusAt waits for the status marker; when the node asks for its
// machine config on the way (maintenance mode), it delivers
// Spec.MachineConfig first.
func (vm *VM) waitStatusAt(ctx context.Context) (nodeapi.Status, time.Time, error) {
	for {
		line, at, err := vm.waitConsole(ctx, markerRe)
		if err != nil {
			return nodeapi.Status{}, at, fmt.Errorf("waiting for marker %s: %w", nodeapi.MarkerStatus, err)
		}

		m, details, ok := nodeapi.ParseMarker(line)

		switch {
		case !ok:
			continue
		case m == nodeapi.MarkerMaintenance && vm.spec.NoInbound:
			continue // the hub delivers the config through the tunnel
		case m == nodeapi.MarkerMaintenance:
			if len(vm.spec.MachineConfig) == 0 {
				return nodeapi.Status{}, at, fmt.Errorf("%s waits in maintenance mode for its machine config, and none was given to deliver", vm.spec.Name)
			}

			if err := vm.ApplyConfig(ctx, vm.spec.MachineConfig); err != nil {
				return nodeapi.Status{}, at, err
			}
		case m == nodeapi.MarkerStatus:
			st, err := nodeapi.ParseStatus(details)
			if err == nil && vm.spec.TPM && !st.TPMUnlocked && !vm.TPMAlive() {
				// without this, a crashed swtpm would pass for a refusal
				err = fmt.Errorf("%s: swtpm exited during the boot (see %s): the unlock failure %q is not the TPM's refusal",
					vm.spec.Name, filepath.Join(vm.workDir, "swtpm.log"), st.UnlockError)
			}

			return st, at, err
		}
	}
}

func (c *consoleTail) timeOf(i int) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()

	if i < 0 || i >= len(c.times) {
		return time.Now()
	}

	return c.times[i]
}

func (vm *VM) consoleTailText(n int) string {
	lines, _, _ := vm.console.snapshot(0)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}

	return "console tail:\n  " + strings.Join(lines, "\n  ")
}

func (vm *VM) exitDescription() string {
	select {
	case <-vm.exited:
		if vm.exitErr != nil {
			return "qemu: " + vm.exitErr.Error()
		}

		return "qemu exited normally"
	default:
		return "console closed"
	}
}
