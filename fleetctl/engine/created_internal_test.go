package engine

import (
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Run executes a new rollout from the node rows Create wrote instead of
// reading them back (store.Nodes, 0.14 s of CPU at 30,000 nodes). They must
// be exactly what the read would return: ids, order, values, state.
func TestCreatedRowsAreWhatTheStoreReadsBack(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	require.NoError(t, os.MkdirAll("creds", 0o700))
	require.NoError(t, os.WriteFile("creds/talosconfig", []byte("context: x\n"), 0o600))

	f := sim.Inventory(sim.Spec{Clusters: 37, NodesPerCluster: 5, ClustersPerSite: 4, Regions: 3})
	inv := &inventory.Inventory{Sites: f.Sites, Clusters: f.Clusters}

	for i := range inv.Clusters {
		if i%3 == 0 {
			inv.Clusters[i].Talosconfig = "creds/talosconfig" // made absolute by Create
		}
	}

	inv.Sites[1].Bandwidth = "" // defaulted by Create
	require.NoError(t, inv.Validate())

	p := &plan.Plan{
		Name: "created", Image: sim.Image("v1.14.2"), Version: "v1.14.2",
		Waves: []plan.Wave{
			{Name: "canary", Count: 2},
			{Name: "half", Percent: 50, MaxFailures: 100},
			{Name: "all", Percent: 100, MaxFailures: 100},
		},
		Concurrency:    4,
		MaxUnavailable: 2,
		Health:         plan.HealthGate{Timeout: plan.Duration(time.Second), Interval: plan.Duration(10 * time.Millisecond)},
		Budget:         plan.Budget{MaxFailures: 1000},
	}
	p.Default()
	require.NoError(t, p.Validate())

	st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	id, created, err := create(t.Context(), Options{Inventory: inv, Plan: p, Store: st})
	require.NoError(t, err)

	read, err := st.Nodes(t.Context(), id)
	require.NoError(t, err)

	require.Len(t, created, 37*5)
	assert.Equal(t, read, created)

	for i, n := range created {
		require.Equal(t, i, n.ID, "id order")
		assert.Equal(t, store.NodePending, n.State)
	}

	assert.Equal(t, filepath.Join(dir, "creds/talosconfig"), created[0].Talosconfig)
	assert.Equal(t, inventory.BandwidthMedium, created[5*4].Bandwidth, "site 1's default bandwidth")

	// Repeated values share one copy, as store.Nodes keeps them.
	w := func(n store.Node) *byte { return unsafe.StringData(n.Role) }
	assert.Equal(t, w(created[1]), w(created[len(created)-1]), "one copy of the worker role")
}
