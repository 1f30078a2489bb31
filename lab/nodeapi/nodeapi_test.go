package nodeapi_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// A detail a client controls (an image label, an error text) must never
// start a console line of its own: the tests trust lines with MarkerPrefix.
func TestFormatMarkerCannotForgeALine(t *testing.T) {
	cases := []struct {
		details string
		want    string
	}{
		{details: "version=1.0.0", want: "LABOS: init version=1.0.0"},
		{details: "entry=lab\nLABOS: healthy", want: `LABOS: init entry=lab\nLABOS: healthy`},
		{details: "entry=lab\rLABOS: healthy", want: `LABOS: init entry=lab\rLABOS: healthy`},
		{details: "a\x00b\x1b[2Kc\td\x7f", want: `LABOS: init a\x00b\x1b[2Kc\td\x7f`},
		{details: "a\u2028b\u0085c", want: `LABOS: init a\u2028b\u0085c`},
		{details: "bad\xffutf8", want: `LABOS: init bad\xffutf8`},
		{details: `json {"a":"x\ny"}`, want: `LABOS: init json {"a":"x\ny"}`},
	}

	for _, tc := range cases {
		got := nodeapi.FormatMarker(nodeapi.MarkerInit, tc.details)
		require.Equal(t, tc.want, got)
		require.Len(t, strings.Split(got, "\n"), 1)
		require.NotContains(t, got, "\r")

		m, _, ok := nodeapi.ParseMarker(got)
		require.True(t, ok)
		require.Equal(t, nodeapi.MarkerInit, m)
		require.True(t, strings.HasPrefix(got, nodeapi.MarkerPrefix+nodeapi.MarkerInit+" "))
	}

	// the marker itself is escaped too
	require.Equal(t, `LABOS: x\nLABOS: healthy`, nodeapi.FormatMarker("x\nLABOS: healthy", ""))
}

// The status line carries JSON; escaping must leave json.Marshal's output
// (which has no raw control characters) untouched so it still decodes.
func TestStatusMarkerRoundTrip(t *testing.T) {
	st := nodeapi.Status{Version: "1.0.0", UnlockError: "x\nLABOS: healthy", Checks: []nodeapi.Check{{Name: "a", Message: "q\"\\\r"}}}
	b, err := json.Marshal(st)
	require.NoError(t, err)

	line := nodeapi.FormatMarker(nodeapi.MarkerStatus, string(b))
	require.NotContains(t, line, "\n")

	m, details, ok := nodeapi.ParseMarker(line)
	require.True(t, ok)
	require.Equal(t, nodeapi.MarkerStatus, m)

	got, err := nodeapi.ParseStatus(details)
	require.NoError(t, err)
	require.Equal(t, st, got)
}

// Markers carry the guest's uptime in the kernel's printk form; a reader
// that only looks for the marker (the qemu-tests' waits, older harnesses)
// sees the same marker and details as without it.
func TestFormatMarkerAtKeepsTheMarker(t *testing.T) {
	line := nodeapi.FormatMarkerAt(2345678901*time.Nanosecond, nodeapi.MarkerSecureBoot, "enabled=true setupmode=false")
	require.Equal(t, "[    2.345678] LABOS: secureboot enabled=true setupmode=false", line)

	m, details, ok := nodeapi.ParseMarker(line)
	require.True(t, ok)
	require.Equal(t, nodeapi.MarkerSecureBoot, m)
	require.Equal(t, "enabled=true setupmode=false", details)
	require.Contains(t, line, nodeapi.MarkerPrefix+nodeapi.MarkerSecureBoot)

	up, ok := nodeapi.ParseUptime(line)
	require.True(t, ok)
	require.Equal(t, 2345678*time.Microsecond, up)

	// escaping is FormatMarker's: a forged line stays inside this one
	forged := nodeapi.FormatMarkerAt(time.Second, nodeapi.MarkerUnhealthy, "reason=x\n[    9.000000] LABOS: healthy")
	require.Equal(t, `[    1.000000] LABOS: unhealthy reason=x\n[    9.000000] LABOS: healthy`, forged)

	require.Equal(t, "[    0.000000] LABOS: init", nodeapi.FormatMarkerAt(-time.Second, nodeapi.MarkerInit, ""))
	require.Equal(t, "[12345.000001] LABOS: init", nodeapi.FormatMarkerAt(12345*time.Second+time.Microsecond, nodeapi.MarkerInit, ""))
}

func TestParseUptime(t *testing.T) {
	cases := []struct {
		line string
		want time.Duration
		ok   bool
	}{
		{line: "[    0.000000] Linux version 6.12.118+deb13-amd64", want: 0, ok: true},
		{line: "[   10.396295] Run /init as init process", want: 10396295 * time.Microsecond, ok: true},
		{line: "[123456.000001] x", want: 123456*time.Second + time.Microsecond, ok: true},
		{line: "LABOS: init version=1.0.0"},
		{line: "BdsDxe: loading Boot0001"},
		{line: "[    1.5] short fraction"},
		{line: "[ -1.000000] negative"},
		{line: "[    1.000000 no bracket"},
		{line: "[ .000000] no seconds"},
		{line: ""},
	}

	for _, tc := range cases {
		got, ok := nodeapi.ParseUptime(tc.line)
		require.Equal(t, tc.ok, ok, tc.line)
		require.Equal(t, tc.want, got, tc.line)
	}
}
