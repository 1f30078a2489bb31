package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/store"
)

// `rollout status` shows, per site, how many nodes are staged, pulling,
// failed and pending, and why the failed ones failed, in text and JSON,
// from the store (any process, while the executor runs).
func TestRolloutStatusShowsStaging(t *testing.T) {
	dir := t.TempDir()
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(dir, "fleet.db")}
	ctx := context.Background()

	st, err := store.Open(c.db, store.Options{})
	require.NoError(t, err)

	nodes := []store.Node{
		{ID: 0, Cluster: "ber-a", Name: "n0", Role: "worker", Site: "ber-1"},
		{ID: 1, Cluster: "ber-a", Name: "n1", Role: "worker", Site: "ber-1"},
		{ID: 2, Cluster: "ber-a", Name: "n2", Role: "worker", Site: "ber-1"},
		{ID: 3, Cluster: "tok-a", Name: "n0", Role: "worker", Site: "tok-1"},
		{ID: 4, Cluster: "tok-a", Name: "n1", Role: "worker", Site: "tok-1"},
	}
	require.NoError(t, st.CreateRollout(ctx, store.Rollout{ID: "r1", Name: "v2", Image: "img", Version: "v2", Plan: "{}", Driver: "talos"},
		[]store.Site{{Name: "ber-1", TimeZone: "Europe/Berlin", Windows: "[]"}, {Name: "tok-1", TimeZone: "Asia/Tokyo", Windows: "[]"}},
		[]store.Wave{{Index: 0, Name: "all", Nodes: len(nodes), Concurrency: 1}}, nodes, "tester"))

	l, err := st.AcquireLease(ctx, "r1", "elsewhere", 1, 0, false, "tester")
	require.NoError(t, err)

	rec := func(id int, subject, state, reason string, bytes int64) {
		require.NoError(t, l.RecordStaging(ctx, "tester", store.Staging{Node: id, Subject: subject, State: state, Reason: reason, Bytes: bytes}))
	}
	rec(0, "ber-a/n0", store.StageStaged, "", 100<<20)
	rec(1, "ber-a/n1", store.StageStaged, "", 100<<20)
	rec(2, "ber-a/n2", store.StagePulling, "attempt 1 failed: i/o timeout", 0)
	rec(3, "tok-a/n0", store.StageFailed, "pulling img: connection reset by peer (after 7 attempts, staging timeout 1h0m0s)", 0)
	rec(4, "tok-a/n1", store.StagePending, "", 0)
	require.NoError(t, st.Close())

	out, code := c.stdout("rollout", "status")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "staging (image pulled ahead of the maintenance windows):")
	assert.Regexp(t, `SITE\s+NODES\s+STAGED\s+PULLING\s+FAILED\s+PENDING\s+STAGED BYTES`, out)
	assert.Regexp(t, `ber-1\s+3\s+2\s+1\s+0\s+0\s+200\.0 MiB`, out)
	assert.Regexp(t, `tok-1\s+2\s+0\s+0\s+1\s+1\s+-`, out)
	assert.Contains(t, out, "  tok-a/n0 not staged: pulling img: connection reset by peer (after 7 attempts, staging timeout 1h0m0s)")

	out, code = c.stdout("rollout", "status", "-o", "json")
	require.Equal(t, 0, code, out)

	var got struct {
		Staging []store.SiteStaging `json:"staging"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	require.Len(t, got.Staging, 2, out)
	assert.Equal(t, store.SiteStaging{Site: "ber-1", Nodes: 3, Staged: 2, Pulling: 1, Bytes: 200 << 20}, got.Staging[0])
	assert.Equal(t, []store.StagingFailure{{Node: "tok-a/n0", Reason: "pulling img: connection reset by peer (after 7 attempts, staging timeout 1h0m0s)"}}, got.Staging[1].Failures)
	assert.Equal(t, 1, got.Staging[1].Pending)
}
