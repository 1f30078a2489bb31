package store

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNodeRecordsShareStatementsNotRows: writeNodeRecords writes up to 64
// transitions per statement, but each one still updates its node and adds
// its own audit line, in order, also when one batch holds two transitions
// of the same node (UPDATE ... FROM takes each node once per statement).
func TestNodeRecordsShareStatementsNotRows(t *testing.T) {
	const nodes = 100

	st := rolloutOfNodes(t, nodes)

	var recs []*nodeRecord
	for i := range nodes {
		recs = append(recs, &nodeRecord{rollout: "r1", actor: "tester", tr: Transition{
			Node: i, Subject: fmt.Sprintf("c/n%d", i), State: NodeRequested, FromVersion: "v1", UpgradeCall: true, Detail: "upgrade",
		}})
	}

	// Node 7 again within the first 64 (a second request after the
	// first), then failed with an error and rolled back: the later rows win.
	recs = append(recs[:10:10], append([]*nodeRecord{
		{rollout: "r1", actor: "tester", tr: Transition{Node: 7, Subject: "c/n7", State: NodeRequested, UpgradeCall: true, Detail: "again"}},
		{rollout: "r1", actor: "tester", tr: Transition{Node: 7, Subject: "c/n7", State: NodeFailed, Error: "boom", RolledBack: true, Detail: "gate"}},
	}, recs[10:]...)...)

	ops := make([]op, 0, len(recs))
	for _, r := range recs {
		ops = append(ops, op{rec: r})
	}

	require.NoError(t, st.commitAll(ops))

	got, err := st.Nodes(t.Context(), "r1")
	require.NoError(t, err)
	require.Len(t, got, nodes)

	for _, n := range got {
		if n.ID == 7 {
			assert.Equal(t, NodeFailed, n.State)
			assert.Equal(t, "v1", n.FromVersion, "an empty FromVersion keeps the recorded one")
			assert.Equal(t, "boom", n.Error)
			assert.True(t, n.RolledBack)
			assert.Equal(t, 2, n.UpgradeCalls, "both requests counted")

			continue
		}

		assert.Equal(t, NodeRequested, n.State, "node %d", n.ID)
		assert.Equal(t, 1, n.UpgradeCalls, "node %d", n.ID)
		assert.NotZero(t, n.UpdatedAt, "node %d", n.ID)
	}

	audit, err := st.Audit(t.Context(), "r1", 0)
	require.NoError(t, err)
	require.Len(t, audit, 1+nodes+2, "rollout.create plus one line per transition")

	for i, e := range audit[1:] {
		assert.Equal(t, recs[i].tr.Subject, e.Subject, "audit line %d in batch order", i)
		assert.Equal(t, "node."+recs[i].tr.State, e.Action, "audit line %d", i)
		// One rollout and actor: bound once per chunk (?1, ?2), on every row.
		assert.Equal(t, "tester", e.Actor, "audit line %d", i)
		assert.Equal(t, "r1", e.Rollout, "audit line %d", i)
		assert.False(t, e.At.Before(audit[i].At), "audit line %d written after the line before it", i)
	}

	assert.Equal(t, "gate error=boom", audit[1+11].Detail)
}

// TestNodeRecordsChunkBindsRolloutAndActorOnce: a batch mixing actors and
// rollouts, and a state outside the known ones, written through the shared
// multi-row statements: every audit line keeps its own rollout and actor, in
// batch order, and every node its own state. (It guarded a version that
// bound rollout and actor once per chunk and states as integer codes; that
// version was measured slower end to end and reverted, the test stays.)
func TestNodeRecordsChunkBindsRolloutAndActorOnce(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "f.db"), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	for _, id := range []string{"r1", "r2"} {
		var ns []Node
		for i := range 10 {
			ns = append(ns, Node{ID: i, Cluster: "c", Name: fmt.Sprintf("n%d", i)})
		}

		require.NoError(t, st.CreateRollout(t.Context(), Rollout{ID: id, Name: "t", Image: "i", Version: "v2", Plan: "{}"},
			nil, []Wave{{Index: 0, Name: "all", Nodes: 10}}, ns, "tester"))
		require.NoError(t, st.SetState(t.Context(), id, StateCompleted, "", "tester"))
	}

	var ops []op

	for i := range 10 {
		actor, rollout, state := "alice", "r1", NodeDone
		if i%3 == 1 {
			actor = "bob"
		}

		if i%4 == 2 {
			rollout = "r2"
		}

		if i == 9 {
			state = "future-state"
		}

		ops = append(ops, op{rec: &nodeRecord{rollout: rollout, actor: actor, tr: Transition{
			Node: i, Subject: fmt.Sprintf("c/n%d", i), State: state, FromVersion: "v1", Detail: "d",
		}}})
	}

	require.NoError(t, st.commitAll(ops))

	audit, err := st.Audit(t.Context(), "", 0)
	require.NoError(t, err)

	var lines []string

	for _, e := range audit {
		if e.Action != "rollout.create" && e.Action != "rollout.state" {
			lines = append(lines, e.Rollout+" "+e.Actor+" "+e.Action+" "+e.Subject)
		}
	}

	assert.Equal(t, []string{
		"r1 alice node.done c/n0", "r1 bob node.done c/n1", "r2 alice node.done c/n2", "r1 alice node.done c/n3",
		"r1 bob node.done c/n4", "r1 alice node.done c/n5", "r2 alice node.done c/n6", "r1 bob node.done c/n7",
		"r1 alice node.done c/n8", "r1 alice node.future-state c/n9",
	}, lines)

	for _, id := range []string{"r1", "r2"} {
		got, err := st.Nodes(t.Context(), id)
		require.NoError(t, err)

		for _, n := range got {
			want := NodePending
			if (id == "r2") == (n.ID%4 == 2) {
				want = NodeDone
				if n.ID == 9 {
					want = "future-state"
				}
			}

			assert.Equal(t, want, n.State, "%s node %d", id, n.ID)
		}
	}
}

// TestNodeRowsListTheirAuditLines: the fleet overview finds a node's audit
// lines through the ids its rows list (migration 0014 dropped the
// audit_subject index). Each transition appends the id of its own line,
// also when another operation of the same group commit writes an audit
// line of SQLite's numbering in between, and a staging record lists its
// line on the staging row.
func TestNodeRowsListTheirAuditLines(t *testing.T) {
	const nodes = 70

	st := rolloutOfNodes(t, nodes)

	rec := func(node int, state string) op {
		return op{rec: &nodeRecord{rollout: "r1", actor: "tester", tr: Transition{Node: node, Subject: fmt.Sprintf("c/n%d", node), State: state}}}
	}

	// One batch: 70 requests (chunks of 64, 4, 1, 1), a wave line between
	// them, then a second transition of some nodes.
	var batch []op
	for i := range nodes {
		batch = append(batch, rec(i, NodeRequested))
	}

	batch = append(batch, op{fn: setWaveState("r1", 0, WaveRunning, "tester")}, rec(3, NodeDone), rec(69, NodeFailed))
	require.NoError(t, st.commitAll(batch))
	require.NoError(t, st.commitAll([]op{rec(3, NodeRequested)}))

	lease, err := st.AcquireLease(t.Context(), "r1", "here", 1, time.Minute, false, "tester")
	require.NoError(t, err)
	require.NoError(t, lease.RecordStaging(t.Context(), "tester", Staging{Node: 3, Subject: "c/n3", State: StagePulling}))

	lines := func(q string, args ...any) []string {
		var ids string
		require.NoError(t, st.DB().QueryRow(q, args...).Scan(&ids))

		rows, err := st.DB().Query(`SELECT subject || ' ' || action FROM audit WHERE id IN (SELECT value FROM json_each('[' || ? || ']')) ORDER BY id`, ids)
		require.NoError(t, err)

		defer rows.Close()

		var out []string

		for rows.Next() {
			var s string
			require.NoError(t, rows.Scan(&s))
			out = append(out, s)
		}

		require.NoError(t, rows.Err())

		return out
	}

	node := `SELECT audit_ids FROM nodes WHERE rollout_id = 'r1' AND id = ?`
	assert.Equal(t, []string{"c/n3 node.requested", "c/n3 node.done", "c/n3 node.requested"}, lines(node, 3))
	assert.Equal(t, []string{"c/n69 node.requested", "c/n69 node.failed"}, lines(node, 69))
	assert.Equal(t, []string{"c/n0 node.requested"}, lines(node, 0))
	assert.Equal(t, []string{"c/n3 staging.pulling"}, lines(`SELECT audit_ids FROM staging WHERE rollout_id = 'r1' AND node = ?`, 3))

	// Every node line is listed by exactly one node row.
	var listed, nodeLines int
	require.NoError(t, st.DB().QueryRow(`SELECT COUNT(*) FROM audit WHERE action LIKE 'node.%'`).Scan(&nodeLines))
	require.NoError(t, st.DB().QueryRow(`SELECT COUNT(*) FROM nodes, json_each('[' || audit_ids || ']') WHERE audit_ids != ''`).Scan(&listed))
	assert.Equal(t, nodes+3, nodeLines)
	assert.Equal(t, nodeLines, listed)

	// The lists are text, one id or comma-separated ids, as the migration
	// and the staging rows write them.
	var notText int
	require.NoError(t, st.DB().QueryRow(`SELECT COUNT(*) FROM nodes WHERE typeof(audit_ids) != 'text' OR audit_ids GLOB '*[^0-9,]*'`).Scan(&notText))
	assert.Zero(t, notText)

	var one string
	require.NoError(t, st.DB().QueryRow(`SELECT audit_ids FROM nodes WHERE rollout_id = 'r1' AND id = 0`).Scan(&one))
	assert.Regexp(t, `^[1-9][0-9]*$`, one)
}

// rolloutOfNodes opens a new store holding rollout r1 with one wave of n
// nodes c/n0 ... c/n<n-1>.
func rolloutOfNodes(t *testing.T, n int) *Store {
	t.Helper()

	st, err := Open(filepath.Join(t.TempDir(), "f.db"), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	var ns []Node
	for i := range n {
		ns = append(ns, Node{ID: i, Cluster: "c", Name: fmt.Sprintf("n%d", i)})
	}

	require.NoError(t, st.CreateRollout(t.Context(), Rollout{ID: "r1", Name: "t", Image: "i", Version: "v2", Plan: "{}"},
		nil, []Wave{{Index: 0, Name: "all", Nodes: n}}, ns, "tester"))

	return st
}
