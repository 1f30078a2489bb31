package harness

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSlotsAcrossProcesses: two other processes holding the slot locks
// (as two test binaries running VMs would; -o: the lock stays with flock,
// not with its child) leave no slot for a third VM
// until one of them exits.
func TestSlotsAcrossProcesses(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("flock(1) not installed (util-linux)")
	}

	dir := t.TempDir()

	var holders []*exec.Cmd

	for i := range MaxConcurrentVMs {
		cmd := exec.Command("flock", "-o", filepath.Join(dir, fmt.Sprintf("slot-%d.lock", i)), "sleep", "60")
		require.NoError(t, cmd.Start())
		holders = append(holders, cmd)

		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck
	}

	// let both processes take their locks
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()

		s, err := acquireSlot(ctx, dir)
		if err == nil {
			s.release()

			return false
		}

		return true
	}, 10*time.Second, 200*time.Millisecond, "the other processes never took the slots")

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()

	_, err := acquireSlot(ctx, dir)
	require.ErrorIs(t, err, context.DeadlineExceeded, "no slot may be free while two other processes hold them")

	require.NoError(t, holders[0].Process.Kill())
	_ = holders[0].Wait()

	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()

	s, err := acquireSlot(ctx2, dir)
	require.NoError(t, err, "a slot frees when its holder dies")
	s.release()
}

// TestPortTakenIsRetried: the port picked for the API is taken by someone
// else before QEMU binds it; the harness notices QEMU's refusal and starts
// it again on another port.
func TestPortTakenIsRetried(t *testing.T) {
	disk := trivialDisk(t)

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { taken.Close() }) //nolint:errcheck

	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return taken.Addr().(*net.TCPAddr).Port, nil
		}

		return freePort()
	}
	t.Cleanup(func() { pickPort = freePort })

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	vm, err := Start(ctx, Spec{Name: "port", Disk: disk})
	require.NoError(t, err)
	t.Cleanup(func() { vm.Close() }) //nolint:errcheck

	require.Equal(t, 2, calls, "a second port must have been picked")
	require.NotEqual(t, taken.Addr().String(), vm.APIEndpoint())
}
