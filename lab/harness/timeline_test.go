package harness

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// readConsole reads a console fixture: "@SECONDS line" gives the host time
// (after QEMU start) the line was read; lines without it inherit the
// previous time.
func readConsole(t *testing.T, path string, started time.Time) ([]string, []time.Time) {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err)

	var (
		lines []string
		times []time.Time
		at    = started
	)

	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if rest, ok := strings.CutPrefix(l, "@"); ok {
			stamp, line, _ := strings.Cut(rest, " ")
			s, err := strconv.ParseFloat(stamp, 64)
			require.NoError(t, err)

			at, l = started.Add(time.Duration(s*1e6)*time.Microsecond), line
		}

		lines = append(lines, l)
		times = append(times, at)
	}

	return lines, times
}

func phaseNames(ps []Phase) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}

	return out
}

// TestBootTimeline: a later boot's console splits into firmware (QEMU start
// to the kernel's clock zero, read from the earliest line's arrival minus
// its uptime), kernel (to /init's first marker) and each labos step, up to
// the marker waited for and not past it.
func TestBootTimeline(t *testing.T) {
	started := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	lines, times := readConsole(t, "testdata/console-later-boot.txt", started)

	end := len(lines) - 2 // the first status line
	ps := bootTimeline(lines, times, started, end)

	require.Equal(t, []string{
		PhaseFirmware, PhaseKernel, "tpm-ready", "phase enter-initrd", "modules-loaded", "secureboot",
		"esp-mounted", "phase leave-initrd", "phase enter-machined", "key-unsealed", "luks-opened",
		"state-mounted", "state-unlocked", "phase start-the-world", "api-up", "healthy", "status",
	}, phaseNames(ps))

	// the earliest arrival minus uptime: "Run /init" at 7.1 s host, 2.0 s
	// guest (the 0.000000 lines came in a burst at 5.1 s)
	require.InDelta(t, 5.1, ps[0].Seconds, 1e-6)
	require.InDelta(t, 2.3, ps[1].Seconds, 1e-6)
	require.InDelta(t, 2.3, ps[1].At, 1e-6)
	require.InDelta(t, 1.1, ps[4].Seconds, 1e-6, "modules")
	require.InDelta(t, 0.5, ps[9].Seconds, 1e-6, "unseal")
	require.InDelta(t, 0.8, ps[15].Seconds, 1e-6, "health checks")
	require.InDelta(t, 6.0, ps[len(ps)-1].At, 1e-6)

	// the phases add up to the guest time of the marker plus the firmware share
	var sum float64
	for _, p := range ps {
		sum += p.Seconds
	}

	require.InDelta(t, 5.1+6.0, sum, 1e-6)
}

// A first boot enrolls keys and resets: the phases are the last firmware
// boot's (its firmware share still counts from QEMU start), and a labos
// without uptimes gives none rather than wrong ones.
func TestBootTimelineFirstBootAndOldLabos(t *testing.T) {
	started := time.Now()
	lines := []string{
		`BdsDxe: loading Boot0001 "UEFI Misc Device"`,
		"[    0.000000] Linux version (never reached: the enrollment reset)",
		`BdsDxe: loading Boot0001 "UEFI Misc Device"`,
		"[    1.000000] Run /init as init process",
		nodeapi.FormatMarkerAt(1500*time.Millisecond, nodeapi.MarkerInit, "version=1"),
		nodeapi.FormatMarkerAt(4*time.Second, nodeapi.MarkerStateFormat, "device=/dev/vda3"),
		nodeapi.FormatMarkerAt(9*time.Second, nodeapi.MarkerStatus, "{}"),
	}
	times := []time.Time{
		started.Add(3 * time.Second), started.Add(3 * time.Second), started.Add(8 * time.Second), started.Add(11 * time.Second),
		started.Add(11500 * time.Millisecond), started.Add(14 * time.Second), started.Add(19 * time.Second),
	}

	ps := bootTimeline(lines, times, started, len(lines)-1)
	require.Equal(t, []string{PhaseFirmware, PhaseKernel, nodeapi.MarkerStateFormat, nodeapi.MarkerStatus}, phaseNames(ps))
	require.InDelta(t, 10.0, ps[0].Seconds, 1e-6)
	require.InDelta(t, 5.0, ps[3].Seconds, 1e-6)

	old := []string{lines[2], nodeapi.FormatMarker(nodeapi.MarkerInit, "version=1"), nodeapi.FormatMarker(nodeapi.MarkerStatus, "{}")}
	require.Empty(t, bootTimeline(old, times[:3], started, 2))

	require.Empty(t, bootTimeline(lines, times, started, len(lines)), "end past the console")
	require.Empty(t, bootTimeline(lines, times[:2], started, 1), "times do not match lines")
}

// initSeconds finds the init marker with the uptime in front of it (it
// matched the line's start before markers carried one).
func TestLastInitBeforeReadsTimedMarkers(t *testing.T) {
	started := time.Now()
	lines, times := readConsole(t, "testdata/console-later-boot.txt", started)
	lines, times = lines[:len(lines)-1], times[:len(times)-1] // one status line, as a real boot prints
	vm := &VM{console: &consoleTail{lines: lines, times: times}, started: started}

	require.InDelta(t, 7.4, vm.lastInitBefore(times[len(times)-1]), 1e-6)
	require.Len(t, vm.timeline(nodeapi.MarkerStatus, times[len(times)-1]), 17)
	require.Len(t, vm.timeline(nodeapi.MarkerInit, times[len(times)-1]), 2, "firmware and kernel only")
}
