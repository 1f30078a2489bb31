package store

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/internal/cputime"
)

// BenchmarkWriteNodeRecords commits 30,000 nodes' requested, accepted and
// done transitions in batches of 128 (about what the group commit gathers
// in the 30,000-node bench), without the timing-dependent batching of
// BenchmarkRolloutWrites, so two versions of the statements compare on the
// same work.
func BenchmarkWriteNodeRecords(b *testing.B) {
	const nodes, batch = 30000, 128

	ns := make([]Node, nodes)
	for i := range ns {
		ns[i] = Node{ID: i, Cluster: fmt.Sprintf("c%05d", i/3), Name: fmt.Sprintf("n%d", i%3), Endpoint: "10.0.0.1:50000",
			Role: "worker", Site: "site-01", Region: "eu", Bandwidth: "wan", Talosconfig: "/tmp/talosconfig"}
	}

	// Nodes in flight overlap as in a wave: 1,500 at a time, each moving
	// through its three states.
	var recs []*nodeRecord

	for base := 0; base < nodes; base += 1500 {
		for _, st := range []Transition{
			{State: NodeRequested, FromVersion: "v1.1.0", UpgradeCall: true, Detail: "upgrade v1.1.0 -> v1.2.0"},
			{State: NodeAccepted, Detail: "upgrade accepted"},
			{State: NodeDone, Detail: "healthy at v1.2.0"},
		} {
			for i := base; i < min(base+1500, nodes); i++ {
				tr := st
				tr.Node, tr.Subject = i, ns[i].Cluster+"/"+ns[i].Name
				recs = append(recs, &nodeRecord{rollout: "r-20261130-184132-790292", actor: "tester@host", tr: tr})
			}
		}
	}

	var cpu time.Duration

	for b.Loop() {
		b.StopTimer()

		s, err := Open(filepath.Join(b.TempDir(), "f.db"), Options{})
		require.NoError(b, err)
		require.NoError(b, s.CreateRollout(b.Context(), Rollout{ID: "r-20261130-184132-790292", Name: "t", Image: "i", Version: "v2", Plan: "{}"},
			nil, []Wave{{Index: 0, Name: "all", Nodes: nodes}}, ns, "tester"))

		b.StartTimer()

		c0 := cputime.Process()

		for rest := recs; len(rest) > 0; {
			n := min(batch, len(rest))
			ops := make([]op, n)

			for i, r := range rest[:n] {
				ops[i] = op{rec: r}
			}

			require.NoError(b, s.commitAll(ops))

			rest = rest[n:]
		}

		cpu += cputime.Process() - c0

		b.StopTimer()
		require.NoError(b, s.Close())
		b.StartTimer()
	}

	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}
