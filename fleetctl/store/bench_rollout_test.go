package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/internal/cputime"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// benchNodes are 30,000 nodes shaped like the bench's simulated fleet.
func benchNodes() []store.Node {
	const clusters, perC = 10000, 3

	ns := make([]store.Node, 0, clusters*perC)
	for c := range clusters {
		for i := range perC {
			ns = append(ns, store.Node{
				ID: c*perC + i, Wave: min(c, 2), Cluster: fmt.Sprintf("c%05d", c), Name: fmt.Sprintf("n%d", i),
				Endpoint: fmt.Sprintf("10.%d.%d.%d:50000", c/65536, c/256%256, c%256), Role: "worker",
				Site: fmt.Sprintf("site-%02d", c%12), Region: fmt.Sprintf("region-%d", c%4), Bandwidth: "wan",
				Talosconfig: "/tmp/fleetctl-bench/talosconfig",
			})
		}
	}

	return ns
}

// BenchmarkCreateRollout: creating a 30,000-node rollout (the node rows in
// one transaction, in upgrade order) and reading its nodes back (by id), as `rollout start` does,
// reported as process CPU time per rollout (cpu-s/op) and apart as
// create-s/op and read-s/op.
func BenchmarkCreateRollout(b *testing.B) {
	// In the order rollout start writes the rows (engine.rowOrder): by the
	// step of its cluster's sequence a node is upgraded in, then cluster.
	var ns []store.Node

	all := benchNodes()
	for step := range 3 {
		for i := step; i < len(all); i += 3 {
			ns = append(ns, all[i])
		}
	}

	var create, read time.Duration

	for b.Loop() {
		b.StopTimer()

		st, err := store.Open(filepath.Join(b.TempDir(), "f.db"), store.Options{})
		require.NoError(b, err)

		b.StartTimer()

		c0 := cputime.Process()
		require.NoError(b, st.CreateRollout(context.Background(), store.Rollout{ID: "r1", Name: "bench", Image: "i", Version: "v1.2.0", Plan: "{}"},
			[]store.Site{{Name: "s", TimeZone: "UTC", Windows: "[]"}},
			[]store.Wave{{Index: 0, Name: "all", Nodes: len(ns), Concurrency: 500}}, ns, "tester@host"))

		c1 := cputime.Process()
		got, err := st.Nodes(context.Background(), "r1")
		require.NoError(b, err)
		require.Len(b, got, len(ns))

		c2 := cputime.Process()
		create += c1 - c0
		read += c2 - c1

		b.StopTimer()
		require.NoError(b, st.Close())
		b.StartTimer()
	}

	b.ReportMetric((create+read).Seconds()/float64(b.N), "cpu-s/op")
	b.ReportMetric(create.Seconds()/float64(b.N), "create-s/op")
	b.ReportMetric(read.Seconds()/float64(b.N), "read-s/op")
}

// BenchmarkRolloutWrites replays the store's share of the bench's
// 30,000-node rollout (fleetctl/scripts/bench.sh): the rollout created with
// nodes shaped like the simulator's, then 500 workers each taking a
// cluster at a time and writing requested, accepted and done for each of
// its 3 nodes, as the engine does. It reports the process CPU time per
// rollout, which is what the bench's target is about.
func BenchmarkRolloutWrites(b *testing.B) {
	const (
		clusters = 10000
		perC     = 3
		workers  = 500
	)

	ns := benchNodes()

	var cpu time.Duration

	for b.Loop() {
		st, err := store.Open(filepath.Join(b.TempDir(), "f.db"), store.Options{})
		require.NoError(b, err)

		c0 := cputime.Process()
		id := "r-20261130-184132-790292"

		require.NoError(b, st.CreateRollout(context.Background(), store.Rollout{ID: id, Name: "bench", Image: "ghcr.io/x/installer:v1.2.0", Version: "v1.2.0", Plan: "{}"},
			[]store.Site{{Name: "s", TimeZone: "UTC", Windows: "[]"}},
			[]store.Wave{{Index: 0, Name: "all", Nodes: len(ns), Concurrency: workers}}, ns, "tester@host"))

		next := make(chan int, clusters)
		for c := range clusters {
			next <- c
		}
		close(next)

		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for c := range next {
					for i := range perC {
						n := ns[c*perC+i]
						subj := n.Cluster + "/" + n.Name
						for _, tr := range []store.Transition{
							{State: store.NodeRequested, FromVersion: "v1.1.0", UpgradeCall: true, Detail: "upgrade v1.1.0 -> v1.2.0"},
							{State: store.NodeAccepted, Detail: "upgrade accepted"},
							{State: store.NodeDone, Detail: "healthy at v1.2.0"},
						} {
							tr.Node, tr.Subject = n.ID, subj
							if err := st.RecordNode(context.Background(), id, "tester@host", tr); err != nil {
								panic(err)
							}
						}
					}
				}
			})
		}

		wg.Wait()
		cpu += cputime.Process() - c0

		require.NoError(b, st.Close())
	}

	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}
