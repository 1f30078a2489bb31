package nodeapi_test

import (
	"encoding/json"
	"strings"
	"testing"

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
