package engine_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/internal/cputime"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// BenchmarkRollout3000Nodes runs a whole SIMULATED rollout (1000 clusters x 3
// nodes, 2% failures, in-process driver, real SQLite) per iteration and
// reports the process CPU time of engine.Run (cpu-s/op).
func BenchmarkRollout3000Nodes(b *testing.B) {
	b.ReportAllocs()

	var cpu time.Duration

	f := sim.Inventory(sim.Spec{Clusters: 1000, NodesPerCluster: 3})
	inv := &inventory.Inventory{Sites: f.Sites, Clusters: f.Clusters}

	p := &plan.Plan{
		Name: "bench", Image: sim.Image(v2), Version: v2,
		Waves: []plan.Wave{
			{Name: "canary", Count: 1, MaxFailures: 1},
			{Name: "half", Percent: 50, MaxFailurePercent: 10},
			{Name: "all", Percent: 100, MaxFailurePercent: 10},
		},
		Concurrency: 200,
		Health:      plan.HealthGate{Timeout: plan.Duration(100 * time.Millisecond), Interval: plan.Duration(10 * time.Millisecond)},
		Budget:      plan.Budget{MaxFailurePercent: 10},
	}
	p.Default()
	require.NoError(b, p.Validate())

	for b.Loop() {
		dir := b.TempDir()

		fleet, err := sim.Open(dir, sim.Behaviour{InitialVersion: v1, Seed: 1, FailRate: 0.02})
		require.NoError(b, err)

		st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{})
		require.NoError(b, err)

		c0 := cputime.Process()
		res, err := engine.Run(b.Context(), engine.Options{Inventory: inv, Plan: p, Store: st, Driver: fleet.Factory(), DriverName: "sim"})
		cpu += cputime.Process() - c0

		require.NoError(b, err)
		require.Equal(b, 3000, res.Done+res.Failed+res.Skipped)

		st.Close()
		fleet.Close()
	}

	b.ReportMetric(float64(3000*b.N)/b.Elapsed().Seconds(), "nodes/s")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}
