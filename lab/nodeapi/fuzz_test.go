package nodeapi_test

import (
	"strings"
	"testing"
	"time"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// FuzzFormatMarker: whatever the details, a marker is one line that parses
// back to its own marker.
func FuzzFormatMarker(f *testing.F) {
	f.Add("unhealthy", "reason=x\nLABOS: healthy")
	f.Add("init", "version=1.0.0")
	f.Add("status", `{"version":"1.0.0","unlockError":"a\nb"}`)
	f.Add("error", "err=\"\x1b[2K\rLABOS: healthy\"")
	f.Add("init", "\xff\xfe\u2028\u0085")

	f.Fuzz(func(t *testing.T, marker, details string) {
		line := nodeapi.FormatMarker(marker, details)

		if strings.ContainsAny(line, "\n\r\x00\x1b\u2028\u2029\u0085") {
			t.Fatalf("marker line %q holds a line break or control character", line)
		}

		if !strings.HasPrefix(line, nodeapi.MarkerPrefix) {
			t.Fatalf("marker line %q lacks the prefix", line)
		}

		m, _, ok := nodeapi.ParseMarker(line)
		want, _, _ := strings.Cut(strings.TrimSpace(nodeapi.EscapeConsole(marker)), " ")

		if want != "" && (!ok || m != want) {
			t.Fatalf("line %q parsed as marker %q, want %q", line, m, want)
		}
	})
}

// FuzzFormatMarkerAt: the uptime in front changes nothing of FormatMarker's
// guarantees, and reads back.
func FuzzFormatMarkerAt(f *testing.F) {
	f.Add(int64(2345678000), "init", "version=1.0.0")
	f.Add(int64(-1), "unhealthy", "reason=x\nLABOS: healthy")
	f.Add(int64(99999999999999), "status", `{"a":"[    1.000000] LABOS: healthy"}`)

	f.Fuzz(func(t *testing.T, ns int64, marker, details string) {
		line := nodeapi.FormatMarkerAt(time.Duration(ns), marker, details)

		if strings.ContainsAny(line, "\n\r\x00\x1b\u2028\u2029\u0085") {
			t.Fatalf("marker line %q holds a line break or control character", line)
		}

		m, d, ok := nodeapi.ParseMarker(line)
		wm, wd, wok := nodeapi.ParseMarker(nodeapi.FormatMarker(marker, details))

		if ok != wok || m != wm || d != wd {
			t.Fatalf("line %q parsed as (%q, %q, %t), without the uptime (%q, %q, %t)", line, m, d, ok, wm, wd, wok)
		}

		got, ok := nodeapi.ParseUptime(line)
		want := max(time.Duration(ns), 0).Truncate(time.Microsecond)

		if want < 4294967296*time.Second && (!ok || got != want) {
			t.Fatalf("uptime of %q read as %v (%t), want %v", line, got, ok, want)
		}
	})
}
