package nodeapi_test

import (
	"strings"
	"testing"

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
