package store

import (
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBadOperationFailsAloneInItsGroupCommit: the writer runs on the
// driver's own connection (BEGIN IMMEDIATE / COMMIT / ROLLBACK issued by
// the store, not database/sql). An operation that fails after writing
// rolls back what it wrote, does not fail the node transitions queued in
// the same group commit, and leaves the connection usable: no transaction
// is left open for the next BEGIN.
func TestBadOperationFailsAloneInItsGroupCommit(t *testing.T) {
	st := rolloutOfNodes(t, 4)
	ctx := t.Context()

	// Hold the writer so that the next operations queue up and are
	// committed as one batch.
	release := make(chan struct{})
	held := make(chan struct{})

	go st.write(ctx, func(*wtx) error { //nolint:errcheck
		close(held)
		<-release

		return nil
	})

	<-held

	errBoom := errors.New("boom")
	errs := make([]error, 4)

	var wg sync.WaitGroup

	for i := range 4 {
		wg.Go(func() {
			if i == 2 {
				errs[i] = st.write(ctx, func(tx *wtx) error {
					if err := audit(tx, now(), "tester", "r1", "test.written-then-failed", "x", ""); err != nil {
						return err
					}

					return errBoom
				})

				return
			}

			errs[i] = st.RecordNode(ctx, "r1", "tester", Transition{Node: i, Subject: fmt.Sprintf("c/n%d", i), State: NodeRequested})
		})
	}

	require.Eventually(t, func() bool { return len(st.ops) == 4 }, 5*time.Second, time.Millisecond)
	close(release)
	wg.Wait()

	for i, err := range errs {
		if i == 2 {
			assert.ErrorIs(t, err, errBoom)

			continue
		}

		assert.NoError(t, err, "transition %d", i)
	}

	var n int
	require.NoError(t, st.DB().QueryRow(`SELECT COUNT(*) FROM audit WHERE action = 'test.written-then-failed'`).Scan(&n))
	assert.Zero(t, n, "the failed operation's audit line was rolled back")

	// The connection is out of the failed transaction: later writes commit.
	require.NoError(t, st.SetState(ctx, "r1", StatePaused, "", "tester"))

	got, err := st.Nodes(ctx, "r1")
	require.NoError(t, err)

	for _, nd := range got {
		want := NodeRequested
		if nd.ID == 2 {
			want = NodePending
		}

		assert.Equal(t, want, nd.State, "node %d", nd.ID)
	}

	r, err := st.Rollout(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, StatePaused, r.State)
}

// TestWriterQueryRowReadsLikeDatabaseSQL: the writer's QueryRow (over the
// driver's connection) scans strings and integers, reports no row as
// sql.ErrNoRows (CreateRollout and AcquireLease depend on it), and names a
// destination it cannot fill.
func TestWriterQueryRowReadsLikeDatabaseSQL(t *testing.T) {
	st := rolloutOfNodes(t, 1)

	var (
		id     string
		waves  int
		nodes  int64
		absent string
	)

	require.NoError(t, st.write(t.Context(), func(tx *wtx) error {
		if err := tx.QueryRow(`SELECT id, (SELECT COUNT(*) FROM waves), (SELECT COUNT(*) FROM nodes) FROM rollouts WHERE id = ?`, "r1").
			Scan(&id, &waves, &nodes); err != nil {
			return err
		}

		err := tx.QueryRow(`SELECT id FROM rollouts WHERE id = ?`, "nope").Scan(&absent)
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("no row: got %v", err)
		}

		var f float32
		err = tx.QueryRow(`SELECT 1`).Scan(&f)
		if err == nil || err.Error() != "column 1: unsupported destination *float32" {
			return fmt.Errorf("float32 destination: got %v", err)
		}

		return nil
	}))

	assert.Equal(t, "r1", id)
	assert.Equal(t, 1, waves)
	assert.Equal(t, int64(1), nodes)

	// AcquireLease reads the rollout in the transaction: a missing one is
	// ErrNotFound, not a scan error.
	_, err := st.AcquireLease(t.Context(), "nope", "here", 1, time.Minute, false, "tester")
	assert.ErrorIs(t, err, ErrNotFound)
}

// TestCreateRolloutStoresEveryNodeColumn: CreateRollout's multi-row
// inserts (every chunk size, the rollout id bound once per statement, the
// state a literal) store each node's own values, pending, and nothing of
// another rollout's. Nodes reads them back, including through the
// rollout's cluster/name index.
func TestCreateRolloutStoresEveryNodeColumn(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "f.db"), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	// 256 + 64 + 16 + 4 + 1 + 1 rows: every chunk size, the last one twice.
	const n = 342

	mk := func(prefix string) []Node {
		ns := make([]Node, n)
		for i := range ns {
			ns[i] = Node{
				ID: i, Wave: i % 5, Cluster: fmt.Sprintf("%sc%03d", prefix, i/3), Name: fmt.Sprintf("n%d", i%3),
				Endpoint: fmt.Sprintf("10.0.%d.%d:50000", i/256, i%256), Role: []string{"controlplane", "worker"}[i%2],
				Site: fmt.Sprintf("site-%d", i%7), Region: fmt.Sprintf("region-%d", i%3), Bandwidth: []string{"wan", "lan", ""}[i%3],
				Talosconfig: fmt.Sprintf("/etc/%s/talosconfig-%d", prefix, i%4), State: NodePending,
			}
		}

		return ns
	}

	for _, id := range []string{"r1", "r2"} {
		require.NoError(t, st.CreateRollout(t.Context(), Rollout{ID: id, Name: "t", Image: "i", Version: "v2", Plan: "{}"},
			nil, []Wave{{Index: 0, Name: "all", Nodes: n}}, mk(id), "tester"))
		require.NoError(t, st.SetState(t.Context(), id, StateCompleted, "", "tester"))
	}

	for _, id := range []string{"r1", "r2"} {
		got, err := st.Nodes(t.Context(), id)
		require.NoError(t, err)

		assert.Equal(t, mk(id), got, "rollout %s", id)

		var cluster string
		require.NoError(t, st.DB().QueryRow(`SELECT cluster FROM nodes INDEXED BY nodes_cluster_name WHERE rollout_id = ? AND cluster = ? AND name = 'n2'`,
			id, id+"c113").Scan(&cluster))
		assert.Equal(t, id+"c113", cluster)
	}
}
