package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/record"
)

func TestSummaryMarksStandinAddons(t *testing.T) {
	var out bytes.Buffer

	require.NoError(t, printResults(&out, []*build.Result{{Dir: "_out/labos", Record: &record.Record{
		Name: "labos", Version: "1.0.0",
		Addons: []record.Addon{
			{Name: "cilium", Version: "1.18.0", Source: "standin", Standin: true},
			{Name: "metallb", Version: "0.15.0", Source: "upstream"},
		},
	}}}))
	require.Regexp(t, `add-on\s+cilium 1.18.0 \(stand-in\)`, out.String())
	require.NotContains(t, out.String(), "metallb 0.15.0 (stand-in)")
}
