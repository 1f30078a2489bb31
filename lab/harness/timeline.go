package harness

import (
	"strings"
	"time"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Phase is one step of a boot: the time from the end of the step before
// to the console marker that ends it.
type Phase struct {
	// Name: "firmware" (QEMU start to the kernel's clock zero: OVMF,
	// systemd-boot, systemd-stub and the kernel's EFI stub, including a
	// first boot's enrollment and reset), "kernel" (kernel start to /init's
	// first marker), then the marker that ended the step ("tpm-ready",
	// "phase enter-initrd", "modules-loaded", "key-unsealed", "api-up",
	// "healthy", "status" ...).
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	// At is the guest's uptime at the end of the step (seconds since the
	// kernel started); 0 for "firmware".
	At float64 `json:"at"`
}

// PhaseFirmware and PhaseKernel name the two phases before /init.
const (
	PhaseFirmware = "firmware"
	PhaseKernel   = "kernel"
)

// bootTimeline splits the boot whose marker is lines[end] into phases.
// Guest times come from the uptime labos prints in front of each marker
// (nodeapi.FormatMarkerAt); the firmware share is the host time of a
// timestamped line minus its guest uptime, the smallest over the boot
// (lines arrive late, never early: kernel messages from before the serial
// console came up are printed in a burst, and the tail polls). times[i] is
// when lines[i] was read. Markers without an uptime (an older labos) are
// left out; a boot without any gives no phases.
func bootTimeline(lines []string, times []time.Time, started time.Time, end int) []Phase {
	if end < 0 || end >= len(lines) || len(times) != len(lines) {
		return nil
	}

	// the boot starts at the last firmware boot-manager start before it
	// (a first boot enrolls keys and resets: its kernel is the second one)
	begin := 0

	for i := end; i >= 0; i-- {
		if firmwareBootRe.MatchString(lines[i]) {
			begin = i

			break
		}
	}

	var (
		kernelStart time.Duration
		found       bool
		phases      []Phase
		prev        time.Duration
	)

	for i := begin; i <= end; i++ {
		up, ok := nodeapi.ParseUptime(lines[i])
		if !ok {
			continue
		}

		if off := times[i].Sub(started) - up; !found || off < kernelStart {
			kernelStart, found = off, true
		}

		m, details, ok := nodeapi.ParseMarker(lines[i])
		if !ok {
			continue
		}

		name := m
		if len(phases) == 0 {
			name = PhaseKernel
		} else if m == nodeapi.MarkerPhase {
			name = m + " " + strings.Fields(details + " -")[0]
		}

		phases = append(phases, Phase{Name: name, Seconds: (up - prev).Seconds(), At: up.Seconds()})
		prev = up
	}

	if !found || len(phases) == 0 {
		return nil
	}

	return append([]Phase{{Name: PhaseFirmware, Seconds: max(kernelStart, 0).Seconds()}}, phases...)
}

// timeline is bootTimeline over this VM's console, for the boot whose
// marker was read at t.
func (vm *VM) timeline(marker string, t time.Time) []Phase {
	c := vm.console
	c.mu.Lock()
	defer c.mu.Unlock()

	for i := len(c.lines) - 1; i >= 0; i-- {
		if c.times[i].After(t) {
			continue
		}

		if m, _, ok := nodeapi.ParseMarker(c.lines[i]); ok && m == marker {
			return bootTimeline(c.lines, c.times, vm.started, i)
		}
	}

	return nil
}
