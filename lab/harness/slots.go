package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// SlotDirEnv names the directory holding the VM slot lock files; every
// process that uses the same directory shares MaxConcurrentVMs slots.
// Default: <os.TempDir()>/labfleet-vm-slots, so `go test ./...` running
// several test binaries at once still starts at most two VMs.
const SlotDirEnv = "LABFLEET_VM_SLOTS"

// slot is one held VM slot: an exclusive flock on a lock file. The kernel
// drops the lock when the process dies, so a killed test never leaks one.
type slot struct{ f *os.File }

func slotDir() string {
	if d := os.Getenv(SlotDirEnv); d != "" {
		return d
	}

	return filepath.Join(os.TempDir(), "labfleet-vm-slots")
}

// acquireSlot waits until one of the MaxConcurrentVMs slots is free.
func acquireSlot(ctx context.Context, dir string) (*slot, error) {
	if err := os.MkdirAll(dir, 0o777); err != nil { //nolint:gosec // shared by all users' test runs on this machine
		return nil, fmt.Errorf("VM slots: %w", err)
	}

	for {
		for i := range MaxConcurrentVMs {
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("slot-%d.lock", i)), os.O_CREATE|os.O_RDWR, 0o666) //nolint:gosec
			if err != nil {
				return nil, fmt.Errorf("VM slots: %w", err)
			}

			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
				return &slot{f: f}, nil
			}

			_ = f.Close()
		}

		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *slot) release() {
	if s == nil || s.f == nil {
		return
	}

	_ = s.f.Close() // closing the only descriptor drops the flock
	s.f = nil
}
