package engine_test

import (
	"context"
	"strings"
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
	"github.com/labfleet/labfleet/fleetctl/window"
)

// stageProbe records, per cluster, what each node was asked and when (on
// the test's clock): "stage", "switch" or "upgrade" (a pull inside the
// window, which staging must avoid).
type stageProbe struct {
	inner driver.Factory
	now   func() time.Time

	mu    sync.Mutex
	calls map[string][]stageCall
}

type stageCall struct {
	what string
	at   time.Time
}

func (p *stageProbe) add(cluster, what string) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.calls[cluster] = append(p.calls[cluster], stageCall{what: what, at: p.now()})
}

func (p *stageProbe) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := p.inner.Open(ctx, t)
	if err != nil {
		return nil, err
	}

	return &stageRecorder{Node: n, st: n.(driver.Stager), add: func(w string) { p.add(t.Cluster, w) }}, nil
}

type stageRecorder struct {
	driver.Node
	st  driver.Stager
	add func(string)
}

func (n *stageRecorder) Upgrade(ctx context.Context, image string) error {
	n.add("upgrade")

	return n.Node.Upgrade(ctx, image)
}

func (n *stageRecorder) Stage(ctx context.Context, image string) error {
	err := n.st.Stage(ctx, image)
	if err == nil {
		n.add("stage")
	}

	return err
}

func (n *stageRecorder) Switch(ctx context.Context, image string) error {
	n.add("switch")

	return n.st.Switch(ctx, image)
}

// flowClock is test time that flows on its own, one minute per millisecond,
// for everyone: the engine and the stager sleep on it side by side, and a
// clock that jumps forward on each sleeper's Sleep (fakeClock) would let
// one of them rush the other past its windows.
type flowClock struct {
	start time.Time
	real  time.Time
}

func newFlowClock(at time.Time) *flowClock { return &flowClock{start: at, real: time.Now()} }

const flowRate = 60000 // test minutes per real minute: 1 min per ms

func (c *flowClock) Now() time.Time {
	return c.start.Add(time.Since(c.real) * flowRate)
}

func (c *flowClock) Sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d / flowRate):
		return nil
	}
}

// With staging, every node pulls the image first and is then only
// switched: no node pulls inside its window (no Upgrade call).
func TestStagingPullsAheadThenSwitches(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 6, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Staging = plan.Staging{Enabled: true}
	})

	probe := &stageProbe{inner: f.fleet.Factory(), now: time.Now, calls: map[string][]stageCall{}}
	o := f.opts()
	o.Driver = probe

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 6, res.Done, "%+v", res)

	for _, c := range f.inv.Clusters {
		var whats []string
		for _, call := range probe.calls[c.Name] {
			whats = append(whats, call.what)
		}

		assert.Equal(t, []string{"stage", "switch"}, whats, "cluster %s", c.Name)
	}

	for key, c := range f.fleet.Counts() {
		assert.Equal(t, 1, c.Upgrades, "node %s", key)
	}

	for key, n := range f.fleet.Stages() {
		assert.Equal(t, 1, n, "node %s pulled once", key)
	}
}

// A node whose pull cannot finish is not switched, and its record says
// why; it is skipped (not a failure) and the others go on.
func TestStagingFailedNodeIsNotSwitched(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 3, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Staging = plan.Staging{Enabled: true, Timeout: plan.Duration(300 * time.Millisecond)}
	})

	bad := f.inv.Clusters[1].Name + "/" + f.inv.Clusters[1].Nodes[0].Name

	fleet, err := sim.Open("", sim.Behaviour{InitialVersion: v1, StageFail: []string{bad}})
	require.NoError(t, err)
	t.Cleanup(func() { fleet.Close() })

	o := f.opts()
	o.Driver = fleet.Factory()

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Done, "%+v", res)
	assert.Equal(t, 1, res.Skipped, "%+v", res)
	assert.Zero(t, res.Failed)

	nodes, err := f.st.Nodes(t.Context(), res.RolloutID)
	require.NoError(t, err)

	for _, n := range nodes {
		if n.Cluster+"/"+n.Name != bad {
			continue
		}

		assert.Equal(t, store.NodeSkipped, n.State)
		assert.Contains(t, n.Error, "not switched: staging failed:")
		assert.Contains(t, n.Error, "connection reset by peer")
	}

	// the staging record says so too, for `rollout status`
	sum, err := f.st.StagingSummary(t.Context(), res.RolloutID)
	require.NoError(t, err)

	var staged, failed int
	for _, ss := range sum {
		staged += ss.Staged
		failed += ss.Failed

		for _, fl := range ss.Failures {
			assert.Equal(t, bad, fl.Node)
			assert.Contains(t, fl.Reason, "connection reset by peer")
		}
	}

	assert.Equal(t, 2, staged, "%+v", sum)
	assert.Equal(t, 1, failed, "%+v", sum)

	assert.Zero(t, fleet.Counts()[bad].Upgrades, "the node whose pull failed is never switched")
}

// Pulls happen only inside each site's download window (20:00-23:00 local)
// and switches inside its maintenance window (02:00-03:00 local), in every
// site's own time zone; the maintenance window only needs the switch.
func TestStagingInDownloadWindows(t *testing.T) {
	windows := []window.Window{{Start: "02:00", Duration: "1h"}}
	f := newFixture(t, sim.Spec{Clusters: 4, NodesPerCluster: 1, ClustersPerSite: 1, Windows: windows}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Concurrency = 1
		// one pull per site at once, every site on its own
		p.Staging = plan.Staging{Enabled: true, Concurrency: 4, Windows: []window.Window{{Start: "20:00", Duration: "3h"}}}
	})

	// 08:00 UTC: in each site's zone (Berlin, New York, Tokyo, Sydney) the
	// next download window comes before the next maintenance window
	clock := newFlowClock(time.Date(2026, 3, 10, 8, 0, 0, 0, time.UTC))
	probe := &stageProbe{inner: f.fleet.Factory(), now: clock.Now, calls: map[string][]stageCall{}}

	o := f.opts()
	o.Driver = probe
	o.Clock = clock
	o.ControlPoll = time.Minute

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 4, res.Done, "%+v", res)

	for _, c := range f.inv.Clusters {
		s, _ := f.inv.Site(c.Site)
		loc, err := time.LoadLocation(s.TimeZone)
		require.NoError(t, err)

		calls := probe.calls[c.Name]
		require.Len(t, calls, 2, "%s: %+v", c.Name, calls)

		staged, switched := calls[0], calls[1]
		require.Equal(t, "stage", staged.what, c.Name)
		require.Equal(t, "switch", switched.what, c.Name)

		if h := staged.at.In(loc).Hour(); h < 20 || h > 22 {
			t.Errorf("%s (%s) pulled at %s local time, outside 20:00-23:00", c.Name, s.TimeZone, staged.at.In(loc))
		}

		assert.Equal(t, 2, switched.at.In(loc).Hour(), "%s (%s) switched at %s local", c.Name, s.TimeZone, switched.at.In(loc))
	}
}

func TestStagingPlanValidation(t *testing.T) {
	p := &plan.Plan{Name: "x", Image: sim.Image(v2), Version: v2, Waves: []plan.Wave{{Name: "all", Percent: 100}}}
	p.Staging = plan.Staging{PerSite: 2}
	p.Default()
	require.ErrorContains(t, p.Validate(), "staging.enabled: staging settings are given but staging is not enabled")

	p.Staging = plan.Staging{Enabled: true, Timeout: plan.Duration(48 * time.Hour), Windows: []window.Window{{Start: "25:00", Duration: "1h"}}}
	err := p.Validate()
	require.ErrorContains(t, err, "staging.timeout: 48h0m0s is out of range")
	require.True(t, strings.Contains(err.Error(), "staging.windows"), "%v", err)

	// with staging the window needs the switch, not the pull
	p.Staging = plan.Staging{Enabled: true}
	p.Default()
	withStaging := p.NodeWindowNeed()
	p.Staging = plan.Staging{}
	assert.Less(t, withStaging, p.NodeWindowNeed())
}

// A site whose download window does not come before its maintenance window
// (Berlin at 22:30 UTC: 23:30 local, the 20:00-23:00 window just closed,
// the 02:00 maintenance window first) is not switched: its record says
// staging did not finish.
func TestStagingNotFinishedBeforeWindowIsSkipped(t *testing.T) {
	windows := []window.Window{{Start: "02:00", Duration: "1h"}}
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1, ClustersPerSite: 1, Windows: windows}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Staging = plan.Staging{Enabled: true, Windows: []window.Window{{Start: "20:00", Duration: "3h"}}}
	})

	s, _ := f.inv.Site(f.inv.Clusters[0].Site)
	require.Equal(t, "Europe/Berlin", s.TimeZone)

	clock := newFlowClock(time.Date(2026, 3, 10, 22, 30, 0, 0, time.UTC))
	o := f.opts()
	o.Clock = clock
	o.ControlPoll = time.Minute

	res, err := engine.Run(t.Context(), o)
	require.NoError(t, err)
	assert.Equal(t, 1, res.Skipped, "%+v", res)

	nodes, err := f.st.Nodes(t.Context(), res.RolloutID)
	require.NoError(t, err)
	require.Len(t, nodes, 1)
	assert.Contains(t, nodes[0].Error, "not switched: staging did not finish before its maintenance window closed")
	berlin, err := time.LoadLocation(s.TimeZone)
	require.NoError(t, err)
	// decided inside the maintenance window, long before the next download window
	assert.Less(t, clock.Now().Sub(time.Date(2026, 3, 11, 1, 0, 0, 0, time.UTC)), 4*time.Hour, "now %s", clock.Now().In(berlin))

	for key, c := range f.fleet.Counts() {
		assert.Zero(t, c.Upgrades, "node %s", key)
	}
}

// Staging progress is in the store, so a resumed rollout does not pull
// again what a node still holds; it asks each node first
// (driver.StageChecker) instead of trusting the record, and pulls again
// for a node that lost its image since (here: it rebooted).
func TestStagingResumeRechecksRecordedNodes(t *testing.T) {
	windows := []window.Window{{Start: "02:00", Duration: "1h"}}
	f := newFixture(t, sim.Spec{Clusters: 3, NodesPerCluster: 1, ClustersPerSite: 3, Windows: windows}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
		p.Staging = plan.Staging{Enabled: true, PerSite: 3}
	})

	s, _ := f.inv.Site(f.inv.Clusters[0].Site)
	require.Equal(t, "Europe/Berlin", s.TimeZone)

	// 03:30 in Berlin: staging runs at once, the next 02:00 window is
	// 22.5 h (1.35 s of test time) away, ample for the first run to stage
	// and stop on a loaded machine
	start := time.Date(2026, 3, 10, 2, 30, 0, 0, time.UTC)
	o := f.opts()
	o.Clock = newFlowClock(start)
	o.ControlPoll = time.Minute

	id, err := engine.Create(t.Context(), o)
	require.NoError(t, err)

	// the stager records each node as it goes; stop once all hold the image
	runUntilStaging(t, f, o, id, func(s store.SiteStaging) bool { return s.Staged == 3 })

	for key, c := range f.fleet.Counts() {
		require.Zero(t, c.Upgrades, "node %s switched before its window", key)
	}

	lost := f.inv.Clusters[1].Name + "/" + f.inv.Clusters[1].Nodes[0].Name
	f.fleet.DropStaged(lost)

	o.Clock = newFlowClock(start)
	res, err := engine.Resume(t.Context(), o, id)
	require.NoError(t, err)
	assert.Equal(t, 3, res.Done, "%+v", res)

	for key, n := range f.fleet.Stages() {
		if key == lost {
			assert.Equal(t, 2, n, "node %s lost its image: pulled again", key)
		} else {
			assert.Equal(t, 1, n, "node %s still holds its image: not pulled again", key)
		}
	}

	for _, c := range f.inv.Clusters {
		// asked after each pull (did it land?) and once on resume
		key := c.Name + "/" + c.Nodes[0].Name
		assert.Equal(t, f.fleet.Stages()[key]+1, f.fleet.StageChecks()[key], "node %s", key)
	}

	rows, err := f.st.Staging(t.Context(), id)
	require.NoError(t, err)
	require.Len(t, rows, 3)

	for _, r := range rows {
		assert.Equal(t, store.StageStaged, r.State, "%+v", r)
		assert.Equal(t, int64(sim.SimImageSize), r.Bytes, "%+v", r)
	}

	audit, err := f.st.Audit(t.Context(), id, 0)
	require.NoError(t, err)

	var rechecks []string
	for _, a := range audit {
		if strings.HasPrefix(a.Action, "staging.") && strings.Contains(a.Detail, "resume") {
			rechecks = append(rechecks, a.Subject+" "+a.Action+" "+a.Detail)
		}
	}

	assert.Len(t, rechecks, 3, "%v", rechecks)
	assert.Contains(t, strings.Join(rechecks, "\n"), lost+" staging.pending recorded staged, but on resume the node no longer holds the image: pulling again")
}

// A pull cut short by the rollout stopping is recorded pending again with
// the reason, not left "pulling": status of a stopped rollout must not
// claim a pull is running.
func TestStagingInterruptedIsRecordedPending(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Staging = plan.Staging{Enabled: true, PerSite: 2}
	})

	slow, err := sim.Open("", sim.Behaviour{InitialVersion: v1, Latency: sim.Duration(time.Hour)})
	require.NoError(t, err)
	t.Cleanup(func() { slow.Close() })

	o := f.opts()
	o.Driver = slow.Factory()

	id, err := engine.Create(t.Context(), o)
	require.NoError(t, err)

	runUntilStaging(t, f, o, id, func(s store.SiteStaging) bool { return s.Pulling == 2 })

	rows, err := f.st.Staging(t.Context(), id)
	require.NoError(t, err)
	require.Len(t, rows, 2)

	for _, r := range rows {
		assert.Equal(t, store.StagePending, r.State, "%+v", r)
		assert.Contains(t, r.Reason, "interrupted: the rollout stopped")
	}
}

// runUntilStaging runs the rollout until its one site's staging summary
// satisfies done, then interrupts it.
func runUntilStaging(t *testing.T, f *fixture, o engine.Options, id string, done func(store.SiteStaging) bool) {
	t.Helper()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	ended := make(chan error, 1)

	go func() {
		_, err := engine.Resume(ctx, o, id)
		ended <- err
	}()

	require.Eventually(t, func() bool {
		sum, err := f.st.StagingSummary(t.Context(), id)

		return err == nil && len(sum) == 1 && done(sum[0])
	}, 5*time.Second, 2*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-ended, engine.ErrInterrupted)
}
