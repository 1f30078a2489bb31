package plan_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// Low-bandwidth sites (2 Mbit/s) downloading 20:00-23:00 (3 h) before their
// 02:00 window: a 150 MB image pulled by each of three nodes takes 30 min,
// by ten nodes 100 min (both fit); a 500 MB image by ten nodes 5.6 h (does
// not fit), or 33 min through a site cache, which pulls it once.
func TestEstimateStaging(t *testing.T) {
	inv, err := inventory.Parse("inv.yaml", []byte(`
sites:
  - {name: small, region: eu, timezone: Europe/Berlin, bandwidth: low, windows: [{start: "02:00", duration: 2h}]}
  - {name: big, region: eu, timezone: Europe/Berlin, bandwidth: low, windows: [{start: "02:00", duration: 2h}]}
clusters:
  - {name: s, site: small, nodes: [{name: a, endpoint: 10.0.0.1, role: controlplane}, {name: b, endpoint: 10.0.0.2, role: worker}, {name: c, endpoint: 10.0.0.3, role: worker}]}
  - {name: b, site: big, nodes: [
      {name: n0, endpoint: 10.0.1.0, role: controlplane}, {name: n1, endpoint: 10.0.1.1, role: worker}, {name: n2, endpoint: 10.0.1.2, role: worker},
      {name: n3, endpoint: 10.0.1.3, role: worker}, {name: n4, endpoint: 10.0.1.4, role: worker}, {name: n5, endpoint: 10.0.1.5, role: worker},
      {name: n6, endpoint: 10.0.1.6, role: worker}, {name: n7, endpoint: 10.0.1.7, role: worker}, {name: n8, endpoint: 10.0.1.8, role: worker},
      {name: n9, endpoint: 10.0.1.9, role: worker}]}
`))
	require.NoError(t, err)
	require.NoError(t, inv.Validate())

	p := &plan.Plan{Name: "x", Image: "r/i:v2", Version: "v2", Waves: []plan.Wave{{Name: "all", Percent: 100}},
		Staging: plan.Staging{Enabled: true, Windows: []window.Window{{Start: "20:00", Duration: "3h"}}}}
	p.Default()

	a, err := p.Assign(inv)
	require.NoError(t, err)

	// 12:00 in Berlin (UTC+1 in January)
	now := time.Date(2026, 1, 15, 11, 0, 0, 0, time.UTC)

	est, err := p.EstimateStaging(inv, a, 150_000_000, now)
	require.NoError(t, err)
	require.Len(t, est, 2)

	small, big := est[0], est[1]
	assert.Equal(t, "small", small.Site)
	assert.Equal(t, int64(450_000_000), small.Bytes)
	assert.Equal(t, 30*time.Minute, small.Duration)
	assert.Equal(t, 3*time.Hour, small.Available, "20:00-23:00 before 02:00")
	assert.True(t, small.Fits)
	assert.Equal(t, time.Date(2026, 1, 16, 1, 0, 0, 0, time.UTC), small.WindowOpens.UTC())

	assert.Equal(t, 10, big.Nodes)
	assert.Equal(t, 100*time.Minute, big.Duration)
	assert.True(t, big.Fits)

	est, err = p.EstimateStaging(inv, a, 500_000_000, now)
	require.NoError(t, err)
	assert.False(t, est[1].Fits, "%+v", est[1])
	assert.True(t, est[1].CachedFits, "%+v", est[1])
}
