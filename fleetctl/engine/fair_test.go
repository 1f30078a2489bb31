package engine_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// Finding 8 of issue 13: clusters went to the workers in inventory order and
// a worker slept until its cluster's site opened, so with concurrency 1 an
// open site waited ~14 h behind a closed one. A closed site must not hold a
// worker: the open cluster goes first.
func TestClosedSiteDoesNotStallAWave(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 1, ClustersPerSite: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Concurrency = 1
	})

	// Cluster 0's site opens at 02:00 UTC; cluster 1's site is always open.
	f.inv.Sites[0].TimeZone = "UTC"
	f.inv.Sites[0].Windows = []window.Window{{Start: "02:00", Duration: "1h"}}
	f.inv.Sites[1].Windows = nil

	start := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	probe := &windowProbe{inner: f.fleet.Factory(), clock: clock, times: map[string][]time.Time{}}

	o := f.opts()
	o.Driver = probe
	o.Clock = clock
	o.ControlPoll = time.Minute

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Done)

	open, closed := f.inv.Clusters[1].Name, f.inv.Clusters[0].Name
	require.Len(t, probe.times[open], 1)
	require.Len(t, probe.times[closed], 1)
	assert.Less(t, probe.times[open][0].Sub(start), time.Minute, "the open site's cluster started at once")
	assert.Equal(t, 2, probe.times[closed][0].Hour(), "the closed site's cluster waited for its window")
}

// Finding 4 of issue 13: windows gated only the start, so a node started
// with 30 minutes left in its window although its upgrade, gate and soak
// take up to 40. It must wait for a window the whole operation fits in.
func TestNodeStartsOnlyIfTheOperationFitsTheWindow(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1, ClustersPerSite: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Concurrency = 1
		p.Health.Timeout = plan.Duration(20 * time.Minute)
		p.Health.Soak = plan.Duration(10 * time.Minute)
		p.Health.UpgradeTimeout = plan.Duration(10 * time.Minute)
	})

	f.inv.Sites[0].TimeZone = "UTC"
	f.inv.Sites[0].Windows = []window.Window{{Start: "02:00", Duration: "1h"}}

	start := time.Date(2026, 3, 10, 2, 30, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	probe := &windowProbe{inner: f.fleet.Factory(), clock: clock, times: map[string][]time.Time{}}

	o := f.opts()
	o.Driver = probe
	o.Clock = clock
	o.ControlPoll = time.Minute

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 1, res.Done)

	at := probe.times[f.inv.Clusters[0].Name]
	require.Len(t, at, 1)
	assert.Equal(t, time.Date(2026, 3, 11, 2, 0, 0, 0, time.UTC), at[0], "the next window, the whole operation fits")
}
