package store_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
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
	st := open(t, filepath.Join(t.TempDir(), "f.db"))
	create(t, st, "r1", 1)

	host, _ := os.Hostname()
	ctx := t.Context()

	require.NoError(t, st.AcquireLease(ctx, "r1", host, os.Getpid(), time.Minute, false, "me"))
	require.NoError(t, st.AcquireLease(ctx, "r1", host, os.Getpid(), time.Minute, false, "me"), "re-entrant")

	// A live process (this one) holds it: another pid is refused, unless forced.
	require.ErrorIs(t, st.AcquireLease(ctx, "r1", host, os.Getpid()+100000, time.Minute, false, "you"), store.ErrLeaseHeld)

	// A holder on another host is refused until its heartbeat is stale.
	require.NoError(t, st.AcquireLease(ctx, "r1", "elsewhere", 1, time.Minute, true, "them"))
	require.ErrorIs(t, st.AcquireLease(ctx, "r1", host, os.Getpid(), time.Minute, false, "me"), store.ErrLeaseHeld)
	require.NoError(t, st.AcquireLease(ctx, "r1", host, os.Getpid(), 0, false, "me"), "stale lease taken over")

	// A dead holder on this host is taken over at once (kill -9).
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	require.NoError(t, st.AcquireLease(ctx, "r1", host, dead.Process.Pid, time.Minute, true, "ghost"))
	require.NoError(t, st.AcquireLease(ctx, "r1", host, os.Getpid(), time.Minute, false, "me"))

	r, err := st.Rollout(ctx, "r1")
	require.NoError(t, err)
	assert.Equal(t, os.Getpid(), r.LeasePID)
	assert.True(t, store.LeaseLive(r))

	require.NoError(t, st.ReleaseLease(ctx, "r1", os.Getpid()))
	r, err = st.Rollout(ctx, "r1")
	require.NoError(t, err)
	assert.False(t, store.LeaseLive(r))
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
