package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/harness"
)

func writeReport(t *testing.T, dir, name string, phases ...harness.Phase) string {
	t.Helper()

	b, err := json.Marshal(harness.BootReport{Name: name, Phases: phases})
	require.NoError(t, err)

	p := filepath.Join(dir, name+".json")
	require.NoError(t, os.WriteFile(p, b, 0o600))

	return p
}

// phases prints each phase's median across boots, beside the baseline's.
func TestPhasesMedianBesideBaseline(t *testing.T) {
	dir := t.TempDir()
	ph := func(name string, s float64) harness.Phase { return harness.Phase{Name: name, Seconds: s} }

	l1 := writeReport(t, dir, "lab-1", ph("firmware", 5), ph("kernel", 2), ph("modules-loaded", 1.0), ph("status", 0.5))
	l2 := writeReport(t, dir, "lab-2", ph("firmware", 6), ph("kernel", 3), ph("modules-loaded", 3.0), ph("status", 0.7))
	l3 := writeReport(t, dir, "lab-3", ph("firmware", 7), ph("kernel", 2.5), ph("modules-loaded", 2.0), ph("status", 0.6))
	b1 := writeReport(t, dir, "base-1", ph("firmware", 4), ph("kernel", 1.5))
	b2 := writeReport(t, dir, "base-2", ph("firmware", 4.4), ph("kernel", 1.7))

	out, code := run(t, "phases", l1, l2, l3, "--baseline", b1+","+b2, "-o", "json")
	require.Equal(t, exitOK, code, out)

	var res phasesResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	require.Len(t, res.Phases, 4)
	assert.Equal(t, "firmware", res.Phases[0].Name)
	assert.InDelta(t, 6.0, res.Phases[0].Seconds, 1e-9)
	require.NotNil(t, res.Phases[0].Baseline)
	assert.InDelta(t, 4.2, *res.Phases[0].Baseline, 1e-9)
	assert.InDelta(t, 2.0, res.Phases[2].Seconds, 1e-9, "modules: the median, not the mean")
	assert.Nil(t, res.Phases[2].Baseline)
	assert.InDelta(t, 6+2.5+2+0.6, res.Total, 1e-9)
	assert.InDelta(t, 4.2+1.6, res.BaselineTime, 1e-9)

	out, code = run(t, "phases", l1, "--baseline", b1)
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "| modules-loaded | 1.00 | - |")
	assert.Contains(t, out, "| firmware | 5.00 | 4.00 |")
	assert.Contains(t, out, "| **sum** | **8.50** | **5.50** |")
}

// A report without phases (an older labos) is refused naming the file.
func TestPhasesRefusesReportWithoutPhases(t *testing.T) {
	dir := t.TempDir()
	old := writeReport(t, dir, "old")

	_, code := run(t, "phases", old)
	assert.Equal(t, exitFailure, code)

	_, err := readPhases([]string{old})
	require.ErrorContains(t, err, old+": the report has no phases")

	_, code = run(t, "phases")
	assert.Equal(t, exitUsage, code)
}
