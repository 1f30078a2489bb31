package engine_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Finding 9 of issue 13: nodes left in flight by a crash were reconciled
// (gated) without a cap slot, so a region cap of 2 reached 4. Every node in
// flight counts, reconciled or new.
func TestCapsCountReconcilingNodes(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 8, NodesPerCluster: 1, ClustersPerSite: 1, Regions: 1},
		sim.Behaviour{Latency: sim.Duration(time.Millisecond), StageTime: sim.Duration(30 * time.Millisecond)}, func(p *plan.Plan) {
			p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
			p.Concurrency = 8
			p.RegionCaps = map[string]int{"region-00": 2}
		})

	id, err := engine.Create(t.Context(), f.opts())
	require.NoError(t, err)

	// A crash left four nodes of the region accepted (their upgrades landed).
	for i := range 4 {
		key := sim.Key(f.inv.Clusters[i].Name, "n0")
		require.NoError(t, f.fleet.Upgrade(key, v2))
		require.NoError(t, f.st.RecordNode(t.Context(), id, "t", store.Transition{Node: i, Subject: key, State: store.NodeAccepted, FromVersion: v1, UpgradeCall: true}))
	}

	probe := &concurrencyProbe{
		inner: f.fleet.Factory(), region: map[string]string{},
		cluster: map[string]int{}, cpOpen: map[string]bool{}, regionOpen: map[string]int{},
	}

	for _, c := range f.inv.Clusters {
		s, _ := f.inv.Site(c.Site)
		probe.region[c.Name] = s.Region
	}

	o := f.opts()
	o.Driver = probe

	res, err := engine.Resume(t.Context(), o, id)
	require.NoError(t, err)
	assert.Equal(t, 8, res.Done)
	assert.LessOrEqual(t, probe.maxRegion, 2, "region cap, reconciling nodes included")
}
