package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

type unreachableNode struct{ driver.Node }

func (unreachableNode) Version(context.Context) (string, error) {
	return "", errors.New("dial tcp 10.0.0.10:50000: connection refused")
}

// Finding 10 of issue 13: a node that could not be reached before its
// upgrade counted as a failure, so one switched-off node halted a rollout
// with the default budget of 0. It was not touched: it is skipped (with the
// rest of its cluster) and the rollout goes on.
func TestUnreachableBeforeUpgradeIsNotAFailure(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 2}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	o := f.opts()
	inner := o.Driver
	o.Driver = driver.FactoryFunc(func(ctx context.Context, t driver.Target) (driver.Node, error) {
		n, err := inner.Open(ctx, t)
		if t.Cluster == "c00000" && t.Node == "n0" {
			return unreachableNode{n}, err
		}

		return n, err
	})

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err, "%+v", res)
	assert.Zero(t, res.Failed)
	assert.Equal(t, 2, res.Skipped)
	assert.Equal(t, 2, res.Done)

	nodes, err := f.st.Nodes(t.Context(), res.RolloutID)
	require.NoError(t, err)

	for _, n := range nodes {
		if n.Cluster != "c00000" {
			continue
		}

		assert.Equal(t, store.NodeSkipped, n.State, n.Name)

		if n.Name == "n0" {
			assert.Contains(t, n.Error, "unreachable before upgrade: dial tcp 10.0.0.10:50000: connection refused")
		}
	}

	assert.Zero(t, f.fleet.Counts()["c00000/n0"].Upgrades+f.fleet.Counts()["c00000/n1"].Upgrades, "nothing sent to the unreachable node's cluster")
}

type sickWorker struct{ driver.Node }

func (n sickWorker) Health(ctx context.Context) (driver.Health, error) {
	h, err := n.Node.Health(ctx)
	if len(h.Services) > 0 {
		h.Services[0].Healthy = false
	}

	return h, err
}

// The documented overshoot bound: once a budget is spent no node starts, but
// nodes already in flight finish and may fail too. At most concurrency x
// maxUnavailable nodes are in flight in a wave (control plane nodes go one
// at a time), so a rollout records at most budget + concurrency x
// maxUnavailable failed nodes.
func TestBudgetOvershootBound(t *testing.T) {
	const concurrency, maxUnavailable, budget = 4, 2, 1

	f := newFixture(t, sim.Spec{Clusters: 6, NodesPerCluster: 5}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100, MaxFailures: 1000}}
		p.Concurrency, p.MaxUnavailable = concurrency, maxUnavailable
		p.Budget = plan.Budget{MaxFailures: budget}
	})

	o := f.opts()
	inner := o.Driver
	o.Driver = driver.FactoryFunc(func(ctx context.Context, t driver.Target) (driver.Node, error) {
		n, err := inner.Open(ctx, t)
		if t.Role == "worker" {
			return sickWorker{n}, err
		}

		return n, err
	})

	res, err := engine.Run(t.Context(), o)
	require.ErrorIs(t, err, engine.ErrHalted)
	assert.Greater(t, res.Failed, budget)
	assert.LessOrEqual(t, res.Failed, budget+concurrency*maxUnavailable, "%+v", res)
	t.Logf("budget %d, concurrency %d x maxUnavailable %d: %d failed", budget, concurrency, maxUnavailable, res.Failed)

	upgraded := 0

	for key, c := range f.fleet.Counts() {
		if c.Upgrades > 0 && !strings.HasSuffix(key, "/n0") {
			upgraded++
		}
	}

	assert.Equal(t, res.Failed, upgraded, "every upgraded worker failed; none started after the halt beyond those in flight")
}
