package store_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/store"
)

// Staging progress is kept per node under the executor's lease: written in
// the same transaction that checks the lease token, read back per node and
// summed per site (with the failure reasons) for `rollout status`.
func TestStagingRecordsPerNodeAndSite(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "f.db"))
	ctx := t.Context()

	nodes := []store.Node{
		{ID: 0, Cluster: "a", Name: "n0", Role: "worker", Site: "ber"},
		{ID: 1, Cluster: "a", Name: "n1", Role: "worker", Site: "ber"},
		{ID: 2, Cluster: "a", Name: "n2", Role: "worker", Site: "ber"},
		{ID: 3, Cluster: "b", Name: "n0", Role: "worker", Site: "tok"},
		{ID: 4, Cluster: "b", Name: "n1", Role: "worker", Site: "tok"},
	}
	require.NoError(t, st.CreateRollout(ctx, store.Rollout{ID: "r1", Name: "t", Image: "img", Version: "v2", Plan: "{}"},
		nil, []store.Wave{{Index: 0, Name: "all", Nodes: len(nodes), Concurrency: 1}}, nodes, "tester"))

	l, err := st.AcquireLease(ctx, "r1", "here", 1, 0, false, "me")
	require.NoError(t, err)

	// nothing recorded yet: a rollout that does not stage shows no staging
	sum, err := st.StagingSummary(ctx, "r1")
	require.NoError(t, err)
	assert.Empty(t, sum)

	var queued []store.Staging
	for _, n := range nodes {
		queued = append(queued, store.Staging{Node: n.ID, Subject: n.Cluster + "/" + n.Name, State: store.StagePending})
	}

	require.NoError(t, l.RecordStaging(ctx, "me", queued...))
	require.NoError(t, l.RecordStaging(ctx, "me", store.Staging{Node: 0, Subject: "a/n0", State: store.StagePulling}))
	require.NoError(t, l.RecordStaging(ctx, "me", store.Staging{Node: 0, Subject: "a/n0", State: store.StageStaged, Bytes: 98566144}))
	require.NoError(t, l.RecordStaging(ctx, "me", store.Staging{Node: 1, Subject: "a/n1", State: store.StagePulling}))
	require.NoError(t, l.RecordStaging(ctx, "me", store.Staging{Node: 3, Subject: "b/n0", State: store.StageFailed, Reason: "pulling img: connection reset by peer"}))

	rows, err := st.Staging(ctx, "r1")
	require.NoError(t, err)
	require.Len(t, rows, 5)
	assert.Equal(t, store.StageStaged, rows[0].State)
	assert.Equal(t, int64(98566144), rows[0].Bytes)
	assert.False(t, rows[0].UpdatedAt.IsZero())
	assert.Equal(t, 1, rows[0].Attempts, "one pull asked")
	assert.Equal(t, "pulling img: connection reset by peer", rows[3].Reason)
	assert.Equal(t, store.StagePending, rows[4].State)

	sum, err = st.StagingSummary(ctx, "r1")
	require.NoError(t, err)
	require.Len(t, sum, 2)
	assert.Equal(t, store.SiteStaging{Site: "ber", Nodes: 3, Staged: 1, Pulling: 1, Pending: 1, Bytes: 98566144}, sum[0])
	assert.Equal(t, "tok", sum[1].Site)
	assert.Equal(t, 1, sum[1].Failed)
	assert.Equal(t, 1, sum[1].Pending)
	assert.Equal(t, []store.StagingFailure{{Node: "b/n0", Reason: "pulling img: connection reset by peer"}}, sum[1].Failures)

	// every record has its audit line
	audit, err := st.Audit(ctx, "r1", 1)
	require.NoError(t, err)
	assert.Equal(t, "staging.failed", audit[0].Action)
	assert.Equal(t, "b/n0", audit[0].Subject)

	// a process that lost its lease writes no staging record either
	_, err = st.DB().Exec(`UPDATE rollouts SET lease_host = 'elsewhere', lease_pid = 9, lease_token = 'theirs'`)
	require.NoError(t, err)
	require.ErrorIs(t, l.RecordStaging(ctx, "me", store.Staging{Node: 4, Subject: "b/n1", State: store.StageStaged}), store.ErrLeaseLost)

	rows, err = st.Staging(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, store.StagePending, rows[4].State, "the write after the takeover must not land")
}
