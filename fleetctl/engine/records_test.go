package engine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Finding 2 of issue 13: a node still staging (on Talos: pulling the image
// inside the upgrade) when the gate times out was recorded "failed, rolled
// back (fell back by itself)" although it never fell back and no rollback
// was sent. It must be recorded failed, not rolled back, saying it still runs
// its previous image, and no rollback may be sent to it.
func TestSlowStagingNodeIsNotRecordedRolledBack(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{StageTime: sim.Duration(2 * time.Second)}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Budget = plan.Budget{}
		p.Health.Timeout = plan.Duration(100 * time.Millisecond)
	})

	res, err := engine.Run(t.Context(), f.opts())
	require.ErrorIs(t, err, engine.ErrHalted)
	assert.Equal(t, 1, res.Failed)
	assert.Zero(t, res.RolledBack, "the node was neither rolled back nor fell back")
	assert.Zero(t, f.fleet.Counts()["c00000/n0"].Rollbacks)

	nodes, err := f.st.Nodes(t.Context(), res.RolloutID)
	require.NoError(t, err)
	assert.Contains(t, nodes[0].Error, "health gate timed out")

	assert.Contains(t, lastAudit(t, f, "node.failed").Detail, "still runs its previous image v1.0.0 (the upgrade may not be installed yet); no rollback sent")
}

func lastAudit(t *testing.T, f *fixture, action string) store.AuditEntry {
	t.Helper()

	entries, err := f.st.Audit(t.Context(), "", 0)
	require.NoError(t, err)

	var found store.AuditEntry

	for _, e := range entries {
		if e.Action == action {
			found = e
		}
	}

	require.NotEmpty(t, found.Action, "no audit entry %s", action)

	return found
}

// lostAnswerFactory delivers every Rollback to the node but answers with a
// timeout, as a call whose reply was lost would; it also records the node's
// state in the database at the moment of each call.
type lostAnswerFactory struct {
	inner driver.Factory
	st    *store.Store

	mu        sync.Mutex
	rowStates []string
}

func (f *lostAnswerFactory) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := f.inner.Open(ctx, t)

	return &lostAnswerNode{Node: n, f: f}, err
}

type lostAnswerNode struct {
	driver.Node
	f *lostAnswerFactory
}

func (n *lostAnswerNode) Rollback(ctx context.Context) error {
	var state string
	if err := n.f.st.DB().QueryRow(`SELECT state FROM nodes WHERE id = 0`).Scan(&state); err != nil {
		panic(err)
	}

	n.f.mu.Lock()
	n.f.rowStates = append(n.f.rowStates, state)
	n.f.mu.Unlock()

	if err := n.Node.Rollback(ctx); err != nil {
		return err
	}

	return context.DeadlineExceeded
}

// Finding 5 of issue 13: the rollback was retried until the gate deadline
// and no record was written before it. On Talos a second rollback of a node
// already back on its old image boots the failed image again. Now a
// "rolling-back" row is committed before the one call, and the call is
// never repeated.
func TestRollbackWrittenFirstAndSentOnce(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{BadVersions: []string{v2}, RebootTime: sim.Duration(30 * time.Millisecond)}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	lf := &lostAnswerFactory{inner: f.fleet.Factory(), st: f.st}
	o := f.opts()
	o.Driver = lf

	res, err := engine.Run(t.Context(), o)
	require.ErrorIs(t, err, engine.ErrHalted)

	lf.mu.Lock()
	defer lf.mu.Unlock()

	assert.Equal(t, []string{store.NodeRollingBack}, lf.rowStates, "one rollback call, after the rolling-back row")
	assert.Equal(t, 1, f.fleet.Counts()["c00000/n0"].Rollbacks)
	assert.Equal(t, 1, res.RolledBack, "the node reported its old version again")

	v, err := f.fleet.Version("c00000/n0")
	require.NoError(t, err)
	assert.Equal(t, v1, v)

	assert.Contains(t, lastAudit(t, f, "node.failed").Detail, "not repeated; node runs v1.0.0 again")
}

// A process stopped after writing "rolling-back" must not send the rollback
// again on resume: it asks the node and records what it runs.
func TestResumeNeverRepeatsARollback(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{BadVersions: []string{v2}}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	id, err := engine.Create(t.Context(), f.opts())
	require.NoError(t, err)

	// The state a crash right after the rollback call leaves behind.
	require.NoError(t, f.fleet.Upgrade("c00000/n0", v2))
	require.NoError(t, f.fleet.Rollback("c00000/n0"))
	_, err = f.st.DB().Exec(`UPDATE nodes SET state = ?, from_version = ?, error = 'health gate timed out' WHERE id = 0`, store.NodeRollingBack, v1)
	require.NoError(t, err)

	res, err := engine.Resume(t.Context(), f.opts(), id)
	require.ErrorIs(t, err, engine.ErrHalted)
	assert.Equal(t, 1, res.RolledBack)
	assert.Equal(t, 1, f.fleet.Counts()["c00000/n0"].Rollbacks, "no second rollback")

	nodes, err := f.st.Nodes(t.Context(), id)
	require.NoError(t, err)
	assert.Equal(t, store.NodeFailed, nodes[0].State)
	assert.Equal(t, "health gate timed out", nodes[0].Error)
	assert.Contains(t, lastAudit(t, f, "node.failed").Detail, "rollback was requested before a restart; not repeated")
}

// lostUpgradeAnswer delivers the first Upgrade to the node but answers with a
// timeout, as an upgrade call whose image pull outlived the call would.
type lostUpgradeAnswer struct {
	inner driver.Factory

	mu    sync.Mutex
	calls int
}

func (f *lostUpgradeAnswer) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := f.inner.Open(ctx, t)

	return &lostUpgradeNode{Node: n, f: f}, err
}

type lostUpgradeNode struct {
	driver.Node
	f *lostUpgradeAnswer
}

func (n *lostUpgradeNode) Upgrade(ctx context.Context, image string) error {
	n.f.mu.Lock()
	n.f.calls++
	first := n.f.calls == 1
	n.f.mu.Unlock()

	err := n.Node.Upgrade(ctx, image)
	if first && err == nil {
		return context.DeadlineExceeded
	}

	return err
}

// Finding 3 of issue 13: an upgrade call that times out was recorded
// "upgrade refused" and the node failed without being asked. It reached the
// node: fleetctl must ask the node, find it upgrading, and gate it.
func TestUpgradeCallTimeoutIsNotARefusal(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{StageTime: sim.Duration(20 * time.Millisecond)}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	lf := &lostUpgradeAnswer{inner: f.fleet.Factory()}
	o := f.opts()
	o.Driver = lf

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 1, res.Done)
	assert.Equal(t, 1, f.fleet.Counts()["c00000/n0"].Upgrades, "the journal shows one upgrade")

	entries, err := f.st.Audit(t.Context(), "", 0)
	require.NoError(t, err)

	for _, e := range entries {
		assert.NotContains(t, e.Detail, "refused")
	}
}

// The call timeouts are plan fields with bounds, named in the error.
func TestPlanCallTimeoutsValidated(t *testing.T) {
	p := &plan.Plan{Name: "x", Image: sim.Image(v2), Version: v2, Waves: []plan.Wave{{Name: "all", Percent: 100}},
		Health: plan.HealthGate{CallTimeout: plan.Duration(time.Hour), UpgradeTimeout: plan.Duration(3 * time.Hour)}}
	p.Default()

	err := p.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "health.callTimeout: 1h0m0s is out of range (above 0, at most 10m)")
	assert.Contains(t, err.Error(), "health.upgradeTimeout: 3h0m0s is out of range")

	p.Health.CallTimeout, p.Health.UpgradeTimeout = 0, 0
	p.Default()
	require.NoError(t, p.Validate())
	assert.Equal(t, plan.DefaultUpgradeTimeout, p.Health.UpgradeTimeout.D())
}

// Finding 3 of issue 13: relative talosconfig paths were frozen as given, so
// a resume from another directory could not find the credentials.
func TestTalosconfigFrozenAbsolute(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{}, nil)
	f.inv = inventory.Lab("creds/talosconfig", "127.0.0.1:50001")

	id, err := engine.Create(t.Context(), f.opts())
	require.NoError(t, err)

	nodes, err := f.st.Nodes(t.Context(), id)
	require.NoError(t, err)

	wd, err := os.Getwd()
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(wd, "creds/talosconfig"), nodes[0].Talosconfig)
}

// Findings 6 and 7 of issue 13 in-process: single-node clusters (a
// one-member etcd) upgrade with preserve, and a service without a health
// check does not hold the gate.
func TestTalosLikeSingleNodeClustersUpgrade(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 3, NodesPerCluster: 1}, sim.Behaviour{TalosLike: true}, func(p *plan.Plan) {
		p.Budget = plan.Budget{}
	})

	res, err := engine.Run(t.Context(), f.opts())
	require.NoError(t, err, "%+v", res)
	assert.Equal(t, 3, res.Done)
}

func TestPreserveOnlyForSmallControlPlanes(t *testing.T) {
	for cps, want := range map[int]bool{1: true, 2: true, 3: false, 5: false} {
		assert.Equal(t, want, driver.Target{Role: "controlplane", ControlPlanes: cps}.Preserve(), "%d control plane nodes", cps)
	}

	assert.False(t, driver.Target{Role: "worker", ControlPlanes: 1}.Preserve())
}

// Finding 3 of issue 13: nodes that had been sent an upgrade were recorded
// failed without being asked when the driver could not connect (a relative
// talosconfig path resolved from another directory). Their records must
// stay as they are and the rollout pause, naming the node.
func TestInFlightNodeNotFailedWhenDriverCannotConnect(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
	})

	id, err := engine.Create(t.Context(), f.opts())
	require.NoError(t, err)
	require.NoError(t, f.st.RecordNode(t.Context(), id, "t", store.Transition{Node: 0, Subject: "c00000/n0", State: store.NodeAccepted, FromVersion: v1, UpgradeCall: true}))

	o := f.opts()
	inner := f.fleet.Factory()
	o.Driver = driver.FactoryFunc(func(ctx context.Context, t driver.Target) (driver.Node, error) {
		if t.Cluster == "c00000" {
			return nil, errors.New("cluster has no current context")
		}

		return inner.Open(ctx, t)
	})

	res, err := engine.Resume(t.Context(), o, id)
	require.ErrorIs(t, err, engine.ErrPaused)
	assert.Contains(t, res.Reason, "cannot connect to c00000/n0 to ask what it did (cluster has no current context); its record stays accepted")

	nodes, err := f.st.Nodes(t.Context(), id)
	require.NoError(t, err)
	assert.Equal(t, store.NodeAccepted, nodes[0].State)
}

// One health probe's calls share one call timeout (health.callTimeout): a
// context with a timer per call was a visible share of a large rollout's
// CPU time. The node's version and health answers of a probe carry the same
// deadline.
func TestHealthProbeCallsShareOneCallTimeout(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 2}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	rec := &deadlineRecorder{inner: f.fleet.Factory()}
	o := f.opts()
	o.Driver = rec

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Done)

	rec.mu.Lock()
	defer rec.mu.Unlock()

	probes := 0

	for i, c := range rec.calls {
		if c.what != "health" {
			continue
		}

		require.Positive(t, i, "a probe asks the version first")
		prev := rec.calls[i-1]
		require.Equal(t, "version", prev.what)
		require.False(t, c.deadline.IsZero(), "the probe's calls are bounded")
		assert.Equal(t, prev.deadline, c.deadline, "version and health of one probe share one deadline")

		probes++
	}

	assert.Positive(t, probes)
}

// deadlineRecorder records the deadline of each Version and Health call
// (its nodes report no image, so a probe asks Version then Health).
type deadlineRecorder struct {
	inner driver.Factory

	mu    sync.Mutex
	calls []recordedCall
}

type recordedCall struct {
	what     string
	deadline time.Time
}

func (f *deadlineRecorder) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := f.inner.Open(ctx, t)

	return &deadlineNode{Node: n, f: f}, err
}

func (f *deadlineRecorder) add(ctx context.Context, what string) {
	d, _ := ctx.Deadline()

	f.mu.Lock()
	f.calls = append(f.calls, recordedCall{what: what, deadline: d})
	f.mu.Unlock()
}

type deadlineNode struct {
	driver.Node
	f *deadlineRecorder
}

func (n *deadlineNode) Version(ctx context.Context) (string, error) {
	n.f.add(ctx, "version")

	return n.Node.Version(ctx)
}

func (n *deadlineNode) Health(ctx context.Context) (driver.Health, error) {
	n.f.add(ctx, "health")

	return n.Node.Health(ctx)
}
