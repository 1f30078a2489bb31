package store_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/store"
)

func open(t testing.TB, path string) *store.Store {
	t.Helper()

	st, err := store.Open(path, store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	return st
}

func create(t testing.TB, st *store.Store, id string, nodes int) {
	t.Helper()

	var ns []store.Node
	for i := range nodes {
		ns = append(ns, store.Node{ID: i, Cluster: fmt.Sprintf("c%d", i/3), Name: fmt.Sprintf("n%d", i%3), Role: "worker"})
	}

	require.NoError(t, st.CreateRollout(context.Background(), store.Rollout{ID: id, Name: "t", Image: "img", Version: "v2", Plan: "{}"},
		[]store.Site{{Name: "s", TimeZone: "UTC", Windows: "[]"}},
		[]store.Wave{{Index: 0, Name: "all", Nodes: nodes, Concurrency: 1}}, ns, "tester"))
}

func TestCreateRefusesSecondActiveRollout(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "f.db"))
	create(t, st, "r1", 3)

	err := st.CreateRollout(t.Context(), store.Rollout{ID: "r2", Name: "t", Image: "i", Version: "v", Plan: "{}"}, nil, nil, nil, "tester")
	require.ErrorContains(t, err, "rollout r1 is still active")

	require.NoError(t, st.SetState(t.Context(), "r1", store.StateCompleted, "", "tester"))
	require.NoError(t, st.CreateRollout(t.Context(), store.Rollout{ID: "r2", Name: "t", Image: "i", Version: "v", Plan: "{}"}, nil, nil, nil, "tester"))

	r, err := st.Rollout(t.Context(), "")
	require.NoError(t, err)
	assert.Equal(t, "r2", r.ID, "latest rollout")
}

func TestConcurrentTransitionsAllCommitted(t *testing.T) {
	dir := t.TempDir()
	st := open(t, filepath.Join(dir, "f.db"))

	const n = 600

	create(t, st, "r1", n)

	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			assert.NoError(t, st.RecordNode(t.Context(), "r1", "tester", store.Transition{
				Node: i, Subject: fmt.Sprint(i), State: store.NodeRequested, FromVersion: "v1", UpgradeCall: true,
			}))
		})
	}

	wg.Wait()

	// A second handle (another process) sees every commit.
	other := open(t, filepath.Join(dir, "f.db"))

	counts, err := other.NodeCounts(t.Context(), "r1")
	require.NoError(t, err)
	assert.Equal(t, n, counts[0][store.NodeRequested])

	nodes, err := other.Nodes(t.Context(), "r1")
	require.NoError(t, err)

	for _, nd := range nodes {
		assert.Equal(t, "v1", nd.FromVersion)
		assert.Equal(t, 1, nd.UpgradeCalls)
	}

	audit, err := other.Audit(t.Context(), "r1", 0)
	require.NoError(t, err)
	assert.Len(t, audit, n+1, "rollout.create plus one line per transition")
	assert.Equal(t, "rollout.create", audit[0].Action)
	assert.Equal(t, "tester", audit[1].Actor)
}

func TestDesiredVisibleAcrossHandles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.db")
	a, b := open(t, path), open(t, path)
	create(t, a, "r1", 1)

	require.NoError(t, b.SetDesired(t.Context(), "r1", store.DesiredPause, "someone@else"))

	d, err := a.Desired(t.Context(), "r1")
	require.NoError(t, err)
	assert.Equal(t, store.DesiredPause, d)

	require.ErrorIs(t, b.SetDesired(t.Context(), "nope", store.DesiredPause, "x"), store.ErrNotFound)
}

func TestLease(t *testing.T) {
	db := filepath.Join(t.TempDir(), "f.db")
	st := open(t, db)
	create(t, st, "r1", 1)

	host, _ := os.Hostname()
	ctx := t.Context()

	l, err := st.AcquireLease(ctx, "r1", host, os.Getpid(), time.Minute, false, "me")
	require.NoError(t, err)
	assert.Empty(t, l.TookOver)

	// The database lock is held: a second executor on this host is refused,
	// even with force, and the error names the live holder.
	other := open(t, db)
	_, err = other.AcquireLease(ctx, "r1", host, os.Getpid()+100000, 0, true, "you")
	require.ErrorIs(t, err, store.ErrLeaseHeld)
	assert.Contains(t, err.Error(), fmt.Sprintf("pid %d is alive", os.Getpid()))
	assert.Contains(t, err.Error(), "--force never takes over a live executor")

	r, err := st.Rollout(ctx, "r1")
	require.NoError(t, err)
	assert.True(t, other.ExecutorLive(r))

	require.NoError(t, l.Heartbeat(ctx))
	require.NoError(t, l.Release(ctx))

	r, err = st.Rollout(ctx, "r1")
	require.NoError(t, err)
	assert.False(t, other.ExecutorLive(r))
}

// A holder recorded on this host whose database lock is free is dead
// (kill -9): taken over without --force, and the audit line says so.
func TestLeaseTakesOverDeadHolderOnThisHost(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "f.db"))
	create(t, st, "r1", 1)

	host, _ := os.Hostname()
	ctx := t.Context()

	_, err := st.DB().Exec(`UPDATE rollouts SET lease_host = ?, lease_pid = 4242, lease_at = ?, lease_token = 'old'`, host, time.Now().UnixNano())
	require.NoError(t, err)

	l, err := st.AcquireLease(ctx, "r1", host, os.Getpid(), time.Minute, false, "me")
	require.NoError(t, err)
	assert.Contains(t, l.TookOver, "pid 4242: that process is gone")

	audit, err := st.Audit(ctx, "r1", 1)
	require.NoError(t, err)
	assert.Contains(t, audit[0].Detail, "took over from "+host+" pid 4242")
}

// A holder on another host: refused while it heartbeats, even with force;
// once its heartbeat expired, taken over only with force.
func TestLeaseOtherHostNeedsForceAndExpiry(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "f.db"))
	create(t, st, "r1", 1)

	ctx := t.Context()
	beat := func(ago time.Duration) {
		_, err := st.DB().Exec(`UPDATE rollouts SET lease_host = 'elsewhere', lease_pid = 7, lease_at = ?, lease_token = 'theirs'`,
			time.Now().Add(-ago).UnixNano())
		require.NoError(t, err)
	}

	beat(time.Second)

	_, err := st.AcquireLease(ctx, "r1", "here", 1, 30*time.Second, true, "me")
	require.ErrorIs(t, err, store.ErrLeaseHeld)
	assert.Contains(t, err.Error(), "elsewhere pid 7 heartbeated")

	beat(time.Minute)

	_, err = st.AcquireLease(ctx, "r1", "here", 1, 30*time.Second, false, "me")
	require.ErrorIs(t, err, store.ErrLeaseHeld)
	assert.Contains(t, err.Error(), "'rollout resume --force' takes over")

	l, err := st.AcquireLease(ctx, "r1", "here", 1, 30*time.Second, true, "me")
	require.NoError(t, err)
	assert.Contains(t, l.TookOver, "(--force): no heartbeat for 1m0s")
	require.NoError(t, l.Release(ctx))
}

// Finding 1 of issue 13: a process that lost its lease must not write
// anything more; every guarded write checks the token in its transaction.
func TestLeaseLostStopsEveryWrite(t *testing.T) {
	st := open(t, filepath.Join(t.TempDir(), "f.db"))
	create(t, st, "r1", 2)

	ctx := t.Context()

	l, err := st.AcquireLease(ctx, "r1", "here", 1, time.Minute, false, "me")
	require.NoError(t, err)
	require.NoError(t, l.RecordNode(ctx, "me", store.Transition{Node: 0, Subject: "c/n0", State: store.NodeRequested}))

	// Another host takes over (its flock does not reach us, e.g. NFS).
	_, err = st.DB().Exec(`UPDATE rollouts SET lease_host = 'elsewhere', lease_pid = 9, lease_token = 'theirs'`)
	require.NoError(t, err)

	require.ErrorIs(t, l.RecordNode(ctx, "me", store.Transition{Node: 1, Subject: "c/n1", State: store.NodeRequested}), store.ErrLeaseLost)
	require.ErrorIs(t, l.Heartbeat(ctx), store.ErrLeaseLost)
	require.ErrorIs(t, l.SetState(ctx, store.StateCompleted, "", "me"), store.ErrLeaseLost)
	require.ErrorIs(t, l.SetWaveState(ctx, 0, store.WaveDone, "me"), store.ErrLeaseLost)

	nodes, err := st.Nodes(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, store.NodeRequested, nodes[0].State)
	assert.Equal(t, store.NodePending, nodes[1].State, "the write after the takeover must not land")

	r, err := st.Rollout(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, store.StateRunning, r.State)

	// Release must not clear the new holder's lease.
	require.NoError(t, l.Release(ctx))
	r, err = st.Rollout(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, 9, r.LeasePID)
}

// Read-only commands never create a database and never write.
func TestOpenReadOnly(t *testing.T) {
	dir := t.TempDir()

	_, err := store.OpenReadOnly(filepath.Join(dir, "missing.db"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "missing.db")
	assert.NoFileExists(t, filepath.Join(dir, "missing.db"))

	db := filepath.Join(dir, "f.db")
	st := open(t, db)
	create(t, st, "r1", 1)
	require.NoError(t, st.Close())

	ro, err := store.OpenReadOnly(db)
	require.NoError(t, err)

	defer ro.Close()

	r, err := ro.Rollout(t.Context(), "r1")
	require.NoError(t, err)
	assert.Equal(t, "r1", r.ID)
	require.ErrorIs(t, ro.SetDesired(t.Context(), "r1", store.DesiredPause, "me"), store.ErrReadOnly)
}

// A database written before schema versioning (the old CREATE TABLE
// statements, no migration table) is brought up to date by Open, keeping its
// rows; read-only opening refuses it with a hint instead of failing later.
func TestMigratesUnversionedDatabase(t *testing.T) {
	db := unversionedDB(t, `INSERT INTO rollouts (id, name, image, version, plan, state, desired, created_by, created_at, updated_at)
		VALUES ('r-old', 'old', 'img', 'v1', '{}', 'completed', 'run', 'me', 1, 1)`)

	_, err := store.OpenReadOnly(db)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "rollout resume")

	st := open(t, db)
	r, err := st.Rollout(t.Context(), "r-old")
	require.NoError(t, err)
	assert.Equal(t, "old", r.Name)

	_, err = st.AcquireLease(t.Context(), "r-old", "here", 1, time.Minute, false, "me")
	require.NoError(t, err, "the lease_token column exists after migration")
}

// Migration 0014 lists on each node row the audit lines of that node
// written before it (the overview read them through the audit_subject index
// it drops), and only those: same subject, same rollout.
func TestMigrationListsEarlierAuditLinesOnNodeRows(t *testing.T) {
	db := unversionedDB(t, `
		INSERT INTO rollouts (id, name, image, version, plan, state, desired, created_by, created_at, updated_at)
			VALUES ('r1', 'one', 'img', 'v1', '{}', 'completed', 'run', 'me', 1, 1), ('r2', 'two', 'img', 'v2', '{}', 'completed', 'run', 'me', 2, 2);
		INSERT INTO nodes (rollout_id, id, wave, cluster, name, endpoint, role, site, region, bandwidth, talosconfig, state)
			VALUES ('r1', 0, 0, 'c', 'n0', 'e', 'worker', 's', 'r', 'high', '', 'done'), ('r1', 1, 0, 'c', 'n1', 'e', 'worker', 's', 'r', 'high', '', 'pending'),
			       ('r2', 0, 0, 'c', 'n0', 'e', 'worker', 's', 'r', 'high', '', 'done');
		INSERT INTO audit (at, actor, rollout_id, action, subject, detail) VALUES
			(1, 'me', 'r1', 'rollout.create', 'one', ''), (2, 'me', 'r1', 'node.requested', 'c/n0', ''),
			(3, 'me', 'r2', 'node.requested', 'c/n0', ''), (4, 'me', 'r1', 'staging.staged', 'c/n0', ''),
			(5, 'me', 'r1', 'node.done', 'c/n0', ''), (6, 'me', 'r2', 'node.done', 'c/n0', '');`)

	st := open(t, db)

	ids := func(rollout string, node int) string {
		var s string
		require.NoError(t, st.DB().QueryRow(`SELECT audit_ids FROM nodes WHERE rollout_id = ? AND id = ?`, rollout, node).Scan(&s))

		return s
	}

	assert.Equal(t, "2,4,5", ids("r1", 0))
	assert.Equal(t, "", ids("r1", 1))
	assert.Equal(t, "3,6", ids("r2", 0))

	var n int
	require.NoError(t, st.DB().QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'audit_subject'`).Scan(&n))
	assert.Zero(t, n, "audit_subject is dropped")
}

func BenchmarkRecordNodeConcurrent(b *testing.B) {
	st := open(b, filepath.Join(b.TempDir(), "f.db"))
	create(b, st, "r1", 1000)

	b.ResetTimer()

	for b.Loop() {
		var wg sync.WaitGroup
		for i := range 1000 {
			wg.Go(func() {
				st.RecordNode(context.Background(), "r1", "b", store.Transition{Node: i, Subject: "x", State: store.NodeAccepted})
			})
		}

		wg.Wait()
	}
}

// unversionedDB writes a database as the first release did (its CREATE
// TABLE statements, no migration table) holding the rows of seed.
func unversionedDB(t *testing.T, seed string) string {
	t.Helper()

	db := filepath.Join(t.TempDir(), "old.db")

	raw, err := sql.Open("sqlite", "file:"+db)
	require.NoError(t, err)

	initial, err := os.ReadFile("migrations/0001_initial.sql")
	require.NoError(t, err)
	_, err = raw.Exec(string(initial))
	require.NoError(t, err)
	_, err = raw.Exec(seed)
	require.NoError(t, err)
	require.NoError(t, raw.Close())

	return db
}
