package engine_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// takeoverFactory lets another "host" take the rollout over (as
// `resume --force` after an expired heartbeat would) while the k-th node
// answers its version, and counts node-changing calls after that moment.
type takeoverFactory struct {
	inner driver.Factory
	st    *store.Store
	at    int

	mu           sync.Mutex
	versions     int
	takenOver    bool
	callsAfter   []string
	upgradesSeen int
}

func (f *takeoverFactory) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := f.inner.Open(ctx, t)

	return &takeoverNode{Node: n, f: f, name: t.Cluster + "/" + t.Node}, err
}

type takeoverNode struct {
	driver.Node
	f    *takeoverFactory
	name string
}

func (n *takeoverNode) Version(ctx context.Context) (string, error) {
	n.f.mu.Lock()
	n.f.versions++
	if n.f.versions == n.f.at {
		_, err := n.f.st.DB().Exec(`UPDATE rollouts SET lease_host = 'other-host', lease_pid = 1, lease_token = 'other'`)
		if err != nil {
			panic(err)
		}

		n.f.takenOver = true
	}
	n.f.mu.Unlock()

	return n.Node.Version(ctx)
}

func (n *takeoverNode) note(call string) {
	n.f.mu.Lock()
	defer n.f.mu.Unlock()

	if n.f.takenOver {
		n.f.callsAfter = append(n.f.callsAfter, call+" "+n.name)
	}
}

func (n *takeoverNode) Upgrade(ctx context.Context, image string) error {
	n.note("upgrade")

	return n.Node.Upgrade(ctx, image)
}

func (n *takeoverNode) Rollback(ctx context.Context) error {
	n.note("rollback")

	return n.Node.Rollback(ctx)
}

// TestLostLeaseStopsBeforeAskingAnyNode is finding 1 of issue 13: an
// executor whose lease was taken over never notices today and keeps
// upgrading. Now its next state write fails (the token is checked in the
// same transaction) and it asks no node to change anything after that.
func TestLostLeaseStopsBeforeAskingAnyNode(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 20, NodesPerCluster: 1}, sim.Behaviour{FailRate: 0.3, Seed: 3}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Concurrency = 1
	})

	tf := &takeoverFactory{inner: f.fleet.Factory(), st: f.st, at: 6}
	o := f.opts()
	o.Driver = tf

	start := time.Now()
	_, err := engine.Run(t.Context(), o)
	require.ErrorIs(t, err, store.ErrLeaseLost)
	assert.Less(t, time.Since(start), 5*time.Second)

	tf.mu.Lock()
	defer tf.mu.Unlock()

	require.True(t, tf.takenOver)
	assert.Empty(t, tf.callsAfter, "node calls that change nodes after the lease was lost")

	r := mustRollout(t, f.st)
	assert.Equal(t, store.StateRunning, r.State, "the loser must not record a final state over the new executor's")
	assert.Equal(t, "other-host", r.LeaseHost, "the loser must not clear the new holder's lease")
}
