package engine_test

import (
	"context"
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
	"github.com/labfleet/labfleet/fleetctl/window"
)

const (
	v1 = "v1.0.0"
	v2 = "v2.0.0"
)

type fixture struct {
	dir   string
	inv   *inventory.Inventory
	plan  *plan.Plan
	fleet *sim.Fleet
	st    *store.Store
}

func newFixture(t *testing.T, spec sim.Spec, b sim.Behaviour, mutate func(*plan.Plan)) *fixture {
	t.Helper()

	dir := t.TempDir()
	f := sim.Inventory(spec)
	inv := &inventory.Inventory{Sites: f.Sites, Clusters: f.Clusters}
	require.NoError(t, inv.Validate())

	p := &plan.Plan{
		Name: "test", Image: sim.Image(v2), Version: v2,
		Waves: []plan.Wave{
			{Name: "canary", Count: 1},
			{Name: "half", Percent: 50, MaxFailures: 100},
			{Name: "all", Percent: 100, MaxFailures: 100},
		},
		Concurrency: 4,
		Health:      plan.HealthGate{Timeout: plan.Duration(200 * time.Millisecond), Interval: plan.Duration(2 * time.Millisecond)},
		Budget:      plan.Budget{MaxFailures: 1000},
	}
	if mutate != nil {
		mutate(p)
	}

	p.Default()
	require.NoError(t, p.Validate())

	if b.InitialVersion == "" {
		b.InitialVersion = v1
	}

	fleet, err := sim.Open(dir, b)
	require.NoError(t, err)
	t.Cleanup(func() { fleet.Close() })

	st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	return &fixture{dir: dir, inv: inv, plan: p, fleet: fleet, st: st}
}

func (f *fixture) opts() engine.Options {
	return engine.Options{
		Inventory: f.inv, Plan: f.plan, Store: f.st, Driver: f.fleet.Factory(), DriverName: "sim",
		ControlPoll: 5 * time.Millisecond,
	}
}

func TestRunCompletesWaveByWave(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 12, NodesPerCluster: 3}, sim.Behaviour{Seed: 1}, nil)

	res, err := engine.Run(t.Context(), f.opts())
	require.NoError(t, err)

	assert.Equal(t, store.StateCompleted, res.State)
	assert.Equal(t, 36, res.Done)
	assert.Equal(t, 0, res.Failed)
	assert.True(t, res.Simulated)
	require.Len(t, res.Waves, 3)
	assert.Equal(t, 3, res.Waves[0].Nodes, "one canary cluster of three nodes")
	assert.Equal(t, 18, res.Waves[0].Nodes+res.Waves[1].Nodes, "50% of 12 clusters")

	for key, c := range f.fleet.Counts() {
		assert.Equal(t, 1, c.Upgrades, "node %s", key)
	}

	assertWavesInOrder(t, f)
}

// assertWavesInOrder checks from the simulator's journal that no node of wave
// k+1 was upgraded before every node of wave k had been.
func assertWavesInOrder(t *testing.T, f *fixture) {
	t.Helper()

	nodes, err := f.st.Nodes(t.Context(), mustRollout(t, f.st).ID)
	require.NoError(t, err)

	waveOf := map[string]int{}
	for _, n := range nodes {
		waveOf[sim.Key(n.Cluster, n.Name)] = n.Wave
	}

	events, err := sim.ReadJournal(f.dir)
	require.NoError(t, err)

	last := 0

	for _, ev := range events {
		if ev.Kind != "U" {
			continue
		}

		w := waveOf[ev.Node]
		require.GreaterOrEqual(t, w, last, "node %s of wave %d upgraded after wave %d started", ev.Node, w, last)
		last = w
	}
}

func mustRollout(t *testing.T, st *store.Store) *store.Rollout {
	t.Helper()

	r, err := st.Rollout(t.Context(), "")
	require.NoError(t, err)

	return r
}

func TestBadImageHaltsAtCanaryAndRollsBack(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 1}, sim.Behaviour{BadVersions: []string{v2}}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "canary", Clusters: []string{"c00000"}}, {Name: "rest", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	res, err := engine.Run(t.Context(), f.opts())
	require.ErrorIs(t, err, engine.ErrHalted)

	assert.Equal(t, store.StateHalted, res.State)
	assert.Equal(t, 1, res.Failed)
	assert.Equal(t, 1, res.RolledBack)
	assert.Equal(t, 1, res.Pending, "the second cluster is never touched")

	counts := f.fleet.Counts()
	assert.Equal(t, sim.Counts{Upgrades: 1, Rollbacks: 1}, counts["c00000/n0"])
	assert.Zero(t, counts["c00001/n0"].Upgrades)

	v, err := f.fleet.Version("c00000/n0")
	require.NoError(t, err)
	assert.Equal(t, v1, v, "canary back on the old version")

	// A halted rollout stays halted.
	_, err = engine.Resume(t.Context(), f.opts(), res.RolloutID)
	require.ErrorIs(t, err, engine.ErrHalted)
	assert.Zero(t, f.fleet.Counts()["c00001/n0"].Upgrades)
}

func TestNodeThatFellBackIsNotRolledBackAgain(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 1}, sim.Behaviour{FallbackVersions: []string{v2}}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "canary", Count: 1}, {Name: "rest", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	res, err := engine.Run(t.Context(), f.opts())
	require.ErrorIs(t, err, engine.ErrHalted)
	assert.Equal(t, 1, res.Failed)
	assert.Equal(t, 1, res.RolledBack, "back on the old version counts as rolled back")

	assert.Equal(t, sim.Counts{Upgrades: 1}, f.fleet.Counts()["c00000/n0"], "no rollback call: the node fell back by itself")
	assert.Zero(t, f.fleet.Counts()["c00001/n0"].Upgrades)

	nodes, err := f.st.Nodes(t.Context(), res.RolloutID)
	require.NoError(t, err)
	assert.Contains(t, nodes[0].Error, "node reports version v1.0.0, want v2.0.0")
}

func TestFailureBudgets(t *testing.T) {
	for _, tc := range []struct {
		name       string
		waveBudget int
		overall    int
		wantErr    error
	}{
		{name: "generous budgets complete", waveBudget: 100, overall: 100},
		{name: "wave budget spent halts", waveBudget: 0, overall: 100, wantErr: engine.ErrHalted},
		{name: "overall budget spent halts", waveBudget: 100, overall: 1, wantErr: engine.ErrHalted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, sim.Spec{Clusters: 40, NodesPerCluster: 1}, sim.Behaviour{Seed: 7, FailRate: 0.2}, func(p *plan.Plan) {
				p.Waves = []plan.Wave{{Name: "all", Percent: 100, MaxFailures: tc.waveBudget}}
				p.Budget = plan.Budget{MaxFailures: tc.overall}
			})

			res, err := engine.Run(t.Context(), f.opts())
			if tc.wantErr == nil {
				require.NoError(t, err)
				assert.Positive(t, res.Failed, "seed 7 fails some of 40 nodes")
				assert.Equal(t, 40, res.Done+res.Failed)

				return
			}

			require.ErrorIs(t, err, tc.wantErr)
			assert.Positive(t, res.Pending, "halting leaves nodes untouched")
			assert.Equal(t, res.Failed, res.RolledBack, "failed nodes are rolled back")
		})
	}
}

// concurrencyProbe counts nodes open at once (the engine keeps a node open
// from admission to the end of its gate) per cluster and per region.
type concurrencyProbe struct {
	inner  driver.Factory
	region map[string]string

	mu         sync.Mutex
	cluster    map[string]int
	cpOpen     map[string]bool
	regionOpen map[string]int
	maxCluster int
	maxRegion  int
	cpOverlap  bool
}

func (p *concurrencyProbe) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	p.mu.Lock()
	p.cluster[t.Cluster]++
	p.regionOpen[p.region[t.Cluster]]++

	if p.cpOpen[t.Cluster] || (t.Role == inventory.RoleControlPlane && p.cluster[t.Cluster] > 1) {
		p.cpOverlap = true
	}

	if t.Role == inventory.RoleControlPlane {
		p.cpOpen[t.Cluster] = true
	}

	p.maxCluster = max(p.maxCluster, p.cluster[t.Cluster])
	p.maxRegion = max(p.maxRegion, p.regionOpen[p.region[t.Cluster]])
	p.mu.Unlock()

	n, err := p.inner.Open(ctx, t)

	return &probeNode{Node: n, done: func() {
		p.mu.Lock()
		defer p.mu.Unlock()

		p.cluster[t.Cluster]--
		p.regionOpen[p.region[t.Cluster]]--

		if t.Role == inventory.RoleControlPlane {
			p.cpOpen[t.Cluster] = false
		}
	}}, err
}

type probeNode struct {
	driver.Node
	done func()
}

func (n *probeNode) Close() error {
	n.done()

	return n.Node.Close()
}

func TestCapsAndControlPlaneOneAtATime(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 30, NodesPerCluster: 5, ClustersPerSite: 1, Regions: 3},
		sim.Behaviour{Latency: sim.Duration(time.Millisecond)}, func(p *plan.Plan) {
			p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
			p.Concurrency = 30
			p.MaxUnavailable = 2
			p.RegionCaps = map[string]int{"region-00": 3, "region-01": 3, "region-02": 3}
		})

	probe := &concurrencyProbe{
		inner: f.fleet.Factory(), region: map[string]string{},
		cluster: map[string]int{}, cpOpen: map[string]bool{}, regionOpen: map[string]int{},
	}

	for _, c := range f.inv.Clusters {
		s, _ := f.inv.Site(c.Site)
		probe.region[c.Name] = s.Region
	}

	o := f.opts()
	o.Driver = probe

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 150, res.Done)

	assert.False(t, probe.cpOverlap, "a control plane node was upgraded alongside another node of its cluster")
	assert.LessOrEqual(t, probe.maxCluster, 2, "maxUnavailable")
	assert.Equal(t, 2, probe.maxCluster, "workers do run two at a time")
	assert.LessOrEqual(t, probe.maxRegion, 3, "region cap")
}

// fakeClock advances only when someone sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()

	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()

	return ctx.Err()
}

// windowProbe records the (fake) time of every Upgrade per cluster.
type windowProbe struct {
	inner driver.Factory
	clock *fakeClock

	mu    sync.Mutex
	times map[string][]time.Time
}

func (p *windowProbe) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := p.inner.Open(ctx, t)

	return &upgradeTimer{Node: n, record: func() {
		p.mu.Lock()
		defer p.mu.Unlock()

		p.times[t.Cluster] = append(p.times[t.Cluster], p.clock.Now())
	}}, err
}

type upgradeTimer struct {
	driver.Node
	record func()
}

func (n *upgradeTimer) Upgrade(ctx context.Context, image string) error {
	n.record()

	return n.Node.Upgrade(ctx, image)
}

func TestMaintenanceWindowsInSiteLocalTime(t *testing.T) {
	// 02:00-03:00 local time; sites are in different zones, so the rollout
	// reaches them at different absolute times.
	windows := []window.Window{{Start: "02:00", Duration: "1h"}}
	f := newFixture(t, sim.Spec{Clusters: 4, NodesPerCluster: 1, ClustersPerSite: 1, Windows: windows}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		// One sleeper at a time: concurrent sleepers would each advance the
		// shared fake clock and make it jump past windows.
		p.Concurrency = 1
	})

	clock := &fakeClock{now: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)}
	probe := &windowProbe{inner: f.fleet.Factory(), clock: clock, times: map[string][]time.Time{}}

	o := f.opts()
	o.Driver = probe
	o.Clock = clock
	o.ControlPoll = time.Minute // fake minutes: the engine re-checks windows at least this often

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 4, res.Done)

	for _, c := range f.inv.Clusters {
		s, _ := f.inv.Site(c.Site)
		loc, err := time.LoadLocation(s.TimeZone)
		require.NoError(t, err)

		require.Len(t, probe.times[c.Name], 1, c.Name)

		at := probe.times[c.Name][0].In(loc)
		assert.Equal(t, 2, at.Hour(), "cluster %s (%s) upgraded at %s local time", c.Name, s.TimeZone, at)
	}
}

func TestPauseFromAnotherHandleThenResume(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 20, NodesPerCluster: 2},
		sim.Behaviour{Latency: sim.Duration(2 * time.Millisecond)}, func(p *plan.Plan) {
			p.Concurrency = 2
		})

	// A second, independent handle on the same database file, as another
	// fleetctl process would open it.
	other, err := store.Open(filepath.Join(f.dir, "fleet.db"), store.Options{})
	require.NoError(t, err)

	defer other.Close()

	o := f.opts()

	var once sync.Once

	o.OnResumed = func() {
		once.Do(func() {
			go func() {
				time.Sleep(30 * time.Millisecond)

				r, err := other.Rollout(context.Background(), "")
				if err == nil {
					other.SetDesired(context.Background(), r.ID, store.DesiredPause, "tester@elsewhere")
				}
			}()
		})
	}

	res, err := engine.Run(t.Context(), o)
	require.ErrorIs(t, err, engine.ErrPaused)
	assert.Equal(t, store.StatePaused, res.State)
	assert.Positive(t, res.Pending, "paused before the end")
	assert.Zero(t, res.Waves[0].InFlight+res.Waves[1].InFlight+res.Waves[2].InFlight, "in-flight nodes finish before pausing")

	o.OnResumed = nil
	res, err = engine.Resume(t.Context(), o, res.RolloutID)
	require.NoError(t, err)
	assert.Equal(t, 40, res.Done)

	for key, c := range f.fleet.Counts() {
		assert.Equal(t, 1, c.Upgrades, "node %s", key)
	}

	entries, err := f.st.Audit(t.Context(), res.RolloutID, 0)
	require.NoError(t, err)

	var paused bool

	for _, e := range entries {
		if e.Action == "rollout.pause" && e.Actor == "tester@elsewhere" {
			paused = true
		}
	}

	assert.True(t, paused, "the pause is in the audit log with who asked")
}

func TestResumeReconcilesNodesTouchedBeforeCrash(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 3, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
	})

	id, err := engine.Create(t.Context(), f.opts())
	require.NoError(t, err)

	// Crash 1: the request was recorded and reached the node, the answer was lost.
	require.NoError(t, f.st.RecordNode(t.Context(), id, "t", store.Transition{Node: 0, Subject: "c00000/n0", State: store.NodeRequested, FromVersion: v1, UpgradeCall: true}))
	require.NoError(t, f.fleet.Upgrade("c00000/n0", v2))
	// Crash 2: the request was recorded but never sent.
	require.NoError(t, f.st.RecordNode(t.Context(), id, "t", store.Transition{Node: 1, Subject: "c00001/n0", State: store.NodeRequested, FromVersion: v1, UpgradeCall: true}))

	res, err := engine.Resume(t.Context(), f.opts(), id)
	require.NoError(t, err)
	assert.Equal(t, 3, res.Done)

	for key, c := range f.fleet.Counts() {
		assert.Equal(t, 1, c.Upgrades, "node %s", key)
	}
}

// closingFactory closes the store when the n-th upgrade is requested, as a
// failing disk would.
type closingFactory struct {
	inner driver.Factory
	st    *store.Store
	after int

	mu       sync.Mutex
	upgrades int
}

func (c *closingFactory) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := c.inner.Open(ctx, t)

	return &closingNode{Node: n, f: c}, err
}

type closingNode struct {
	driver.Node
	f *closingFactory
}

func (n *closingNode) Upgrade(ctx context.Context, image string) error {
	n.f.mu.Lock()
	n.f.upgrades++
	if n.f.upgrades == n.f.after {
		n.f.st.Close()
	}
	n.f.mu.Unlock()

	return n.Node.Upgrade(ctx, image)
}

func TestStoreFailureStopsTheRollout(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 30, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Concurrency = 2
	})

	cf := &closingFactory{inner: f.fleet.Factory(), st: f.st, after: 5}
	o := f.opts()
	o.Driver = cf

	_, err := engine.Run(t.Context(), o)
	require.ErrorIs(t, err, store.ErrClosed)

	cf.mu.Lock()
	defer cf.mu.Unlock()

	assert.LessOrEqual(t, cf.upgrades, 5+1, "at most the other in-flight node is asked after the database failed")
}

func TestHungNodeFailsWithoutRollback(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{HangRate: 1}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Budget = plan.Budget{}
	})

	res, err := engine.Run(t.Context(), f.opts())
	require.ErrorIs(t, err, engine.ErrHalted)
	assert.Equal(t, 1, res.Failed)
	assert.Zero(t, res.RolledBack, "a hung node cannot be rolled back through its API")

	entries, err := f.st.Audit(t.Context(), res.RolloutID, 0)
	require.NoError(t, err)

	var failed store.AuditEntry

	for _, e := range entries {
		if e.Action == "node.failed" {
			failed = e
		}
	}

	assert.Contains(t, failed.Detail, "no rollback sent: the node did not say which image it runs")
	assert.Contains(t, failed.Detail, "health gate timed out")
}

func TestResumeDoesNotReupgradeANodeThatFellBack(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 1}, sim.Behaviour{FallbackVersions: []string{v2}}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100, MaxFailures: 10}}
	})

	id, err := engine.Create(t.Context(), f.opts())
	require.NoError(t, err)

	// Crash: the request was recorded and reached the node, which then failed
	// to boot v2 and fell back to v1 by itself before resume.
	require.NoError(t, f.st.RecordNode(t.Context(), id, "t", store.Transition{Node: 0, Subject: "c00000/n0", State: store.NodeRequested, FromVersion: v1, UpgradeCall: true}))
	require.NoError(t, f.fleet.Upgrade("c00000/n0", v2))

	res, err := engine.Resume(t.Context(), f.opts(), id)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Failed, "both nodes fail: v2 never boots")

	assert.Equal(t, 1, f.fleet.Counts()["c00000/n0"].Upgrades, "not asked again after falling back")

	nodes, err := f.st.Nodes(t.Context(), id)
	require.NoError(t, err)
	assert.Contains(t, nodes[0].Error, "fell back")
	assert.True(t, nodes[0].RolledBack)
}

func TestAbortDoesNotRepeatARequest(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
	})

	id, err := engine.Create(t.Context(), f.opts())
	require.NoError(t, err)

	// Crash after recording the request, before sending it; then abort.
	require.NoError(t, f.st.RecordNode(t.Context(), id, "t", store.Transition{Node: 0, Subject: "c00000/n0", State: store.NodeRequested, FromVersion: v1, UpgradeCall: true}))
	require.NoError(t, f.st.SetDesired(t.Context(), id, store.DesiredAbort, "t"))

	res, err := engine.Resume(t.Context(), f.opts(), id)
	require.ErrorIs(t, err, engine.ErrAborted)
	assert.Equal(t, 1, res.Skipped, "the node that stayed on v1 is skipped, not asked again")
	assert.Equal(t, 1, res.Pending, "the untouched node stays pending")
	for key, c := range f.fleet.Counts() {
		assert.Zero(t, c.Upgrades, "node %s was asked to upgrade", key)
	}
}

func TestReconcileRepeatsRequestsOnlyInsideWindows(t *testing.T) {
	windows := []window.Window{{Start: "02:00", Duration: "1h"}}
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1, Windows: windows}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
	})

	clock := &fakeClock{now: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)}
	probe := &windowProbe{inner: f.fleet.Factory(), clock: clock, times: map[string][]time.Time{}}

	o := f.opts()
	o.Driver, o.Clock, o.ControlPoll = probe, clock, time.Minute

	id, err := engine.Create(t.Context(), o)
	require.NoError(t, err)
	require.NoError(t, f.st.RecordNode(t.Context(), id, "t", store.Transition{Node: 0, Subject: "c00000/n0", State: store.NodeRequested, FromVersion: v1, UpgradeCall: true}))

	res, err := engine.Resume(t.Context(), o, id)
	require.NoError(t, err)
	assert.Equal(t, 1, res.Done)

	require.Len(t, probe.times["c00000"], 1)
	at := probe.times["c00000"][0].In(mustLoc(t, f.inv.Sites[0].TimeZone))
	assert.Equal(t, 2, at.Hour(), "request repeated at %s local time", at)
}

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()

	loc, err := time.LoadLocation(name)
	require.NoError(t, err)

	return loc
}

// Summarise counts states and rollbacks in one pass over the node rows;
// the figures equal store.NodeCounts and a count of rolled back rows.
func TestSummariseCountsMatchTheStore(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 40, NodesPerCluster: 3}, sim.Behaviour{Seed: 3, FailRate: 0.15}, nil)

	res, err := engine.Run(t.Context(), f.opts())
	require.NoError(t, err)
	require.Positive(t, res.RolledBack, "the fixture must roll some nodes back")

	counts, err := f.st.NodeCounts(t.Context(), res.RolloutID)
	require.NoError(t, err)

	var rolledBack int
	require.NoError(t, f.st.DB().QueryRowContext(t.Context(), `SELECT COUNT(*) FROM nodes WHERE rollout_id = ? AND rolled_back = 1`, res.RolloutID).Scan(&rolledBack))

	assert.Equal(t, rolledBack, res.RolledBack)

	for _, w := range res.Waves {
		c := counts[w.Index]
		assert.Equal(t, c[store.NodeDone], w.Done, "wave %d", w.Index)
		assert.Equal(t, c[store.NodeFailed], w.Failed, "wave %d", w.Index)
		assert.Equal(t, c[store.NodeSkipped], w.Skipped, "wave %d", w.Index)
		assert.Equal(t, c[store.NodePending], w.Pending, "wave %d", w.Index)
	}

	assert.Equal(t, 120, res.Done+res.Failed+res.Skipped)

	// The run counts its own node rows in memory; what the store says
	// afterwards is the same result.
	fromStore, err := engine.Summarise(t.Context(), f.st, res.RolloutID)
	require.NoError(t, err)
	assert.Equal(t, fromStore, res)
}

// A halted run leaves pending nodes behind: its result, counted from the
// rows in memory, still equals what the store says.
func TestHaltedRunResultMatchesTheStore(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 40, NodesPerCluster: 3}, sim.Behaviour{Seed: 3, FailRate: 0.5}, func(p *plan.Plan) {
		p.Budget = plan.Budget{MaxFailures: 2}
	})

	res, err := engine.Run(t.Context(), f.opts())
	require.ErrorIs(t, err, engine.ErrHalted)
	require.Positive(t, res.Pending, "the halted rollout must leave nodes pending")
	require.Positive(t, res.Failed)

	fromStore, err := engine.Summarise(t.Context(), f.st, res.RolloutID)
	require.NoError(t, err)
	assert.Equal(t, fromStore, res)
}
