package inventory_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/internal/cputime"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/sim"
)

var (
	simInventoriesMu sync.Mutex
	simInventories   = map[int]string{}
)

// simInventory is the inventory.yaml `fleetctl sim init --clusters N
// --nodes-per-cluster 3` writes (many YAML documents of 500 clusters), made
// once per size and process.
func simInventory(b *testing.B, clusters int) string {
	b.Helper()

	simInventoriesMu.Lock()
	defer simInventoriesMu.Unlock()

	if p, ok := simInventories[clusters]; ok {
		return p
	}

	dir, err := os.MkdirTemp("", "inventory-bench-")
	require.NoError(b, err)

	require.NoError(b, sim.WriteDir(dir, sim.Spec{Clusters: clusters, NodesPerCluster: 3, ClustersPerSite: 10, Regions: 10}, sim.Behaviour{}, nil))

	p := filepath.Join(dir, "inventory.yaml")
	simInventories[clusters] = p

	return p
}

// BenchmarkLoad reads and validates the simulator's inventory of 10,000
// clusters (the bench's 30,000 nodes, 3 MB of YAML) and of 100,000, as
// `fleetctl rollout start` does. cpu-s/op is the process CPU time per load.
func BenchmarkLoad(b *testing.B) {
	for _, clusters := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("clusters=%d", clusters), func(b *testing.B) {
			path := simInventory(b, clusters)

			b.ReportAllocs()
			b.ResetTimer()

			c0 := cputime.Process()

			for b.Loop() {
				inv, err := inventory.Load(path)
				if err != nil {
					b.Fatal(err)
				}

				if err := inv.Validate(); err != nil {
					b.Fatal(err)
				}
			}

			b.ReportMetric((cputime.Process()-c0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// BenchmarkValidate is Validate alone over the same inventories.
func BenchmarkValidate(b *testing.B) {
	for _, clusters := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("clusters=%d", clusters), func(b *testing.B) {
			inv, err := inventory.Load(simInventory(b, clusters))
			require.NoError(b, err)

			b.ReportAllocs()
			b.ResetTimer()

			c0 := cputime.Process()

			for b.Loop() {
				if err := inv.Validate(); err != nil {
					b.Fatal(err)
				}
			}

			b.ReportMetric((cputime.Process()-c0).Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}
