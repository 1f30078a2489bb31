package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// leaseStale is how long a lease held on another host stays valid without a heartbeat.
const leaseStale = 30 * time.Second

type execution struct {
	opts    Options
	rollout *store.Rollout
	log     *slog.Logger

	// lease guards every state write: once another process took the rollout
	// over, writes fail with store.ErrLeaseLost and cancel stops all node work.
	lease    *store.Lease
	cancel   context.CancelFunc
	leaseErr error

	plan      plan.Plan
	schedules map[string]*window.Schedule
	// stager pulls the image ahead of the windows (plan staging; nil: off)
	stager *stager
	waves  []store.Wave
	nodes  []store.Node
	// created are the node rows Run just wrote, for load (nil: read them)
	created []store.Node

	controlPlanes map[string]int // per cluster: Talos needs preserve for 1-2
	want          driver.Want    // the image the gate waits for

	regionSem    map[string]chan struct{}
	bandwidthSem map[string]chan struct{}

	mu           sync.Mutex
	waveFailures map[int]int
	failures     int
	maxFailures  int
	stopKind     string // "", store.StateHalted, store.StatePaused, store.StateAborted
	stopReason   string
	stopCh       chan struct{}
	storeErr     error

	// in-flight nodes found at load (left by a previous process) and how many are still open
	resumedAt      time.Time
	inFlightAtLoad int
	inFlightLeft   int
}

// reconciledOne notes that a node found in flight at load is finished.
func (e *execution) reconciledOne() {
	e.mu.Lock()
	e.inFlightLeft--
	left := e.inFlightLeft
	e.mu.Unlock()

	if left == 0 {
		e.log.Info("in-flight nodes reconciled", "nodes", e.inFlightAtLoad, "after", time.Since(e.resumedAt).String())
	}
}

// storeFailed stops the rollout when progress can no longer be recorded:
// touching nodes without a record would defeat crash recovery.
func (e *execution) storeFailed(err error) {
	if errors.Is(err, store.ErrLeaseLost) {
		e.leaseLost(err)

		return
	}

	e.log.Error("database write failed; stopping", "err", err)

	e.mu.Lock()
	if e.storeErr == nil {
		e.storeErr = err
	}
	e.mu.Unlock()

	e.stop(store.StatePaused, "database write failed")
}

// leaseLost stops this process at once: another executor owns the rollout,
// so this one must not ask any node anything more (not even to finish a
// gate: the new executor reconciles in-flight nodes itself).
func (e *execution) leaseLost(err error) {
	e.mu.Lock()
	first := e.leaseErr == nil
	if first {
		e.leaseErr = err
	}
	e.mu.Unlock()

	if first {
		e.log.Error("another process took this rollout over; stopping without touching any more nodes", "err", err)
	}

	e.cancel()
}

func (e *execution) run(parent context.Context) (Result, error) {
	r := e.rollout

	ctx, cancel := context.WithCancel(parent)
	defer cancel()

	e.cancel = cancel

	switch r.State {
	case store.StateCompleted:
		return e.result(ctx, nil)
	case store.StateHalted:
		return e.result(ctx, fmt.Errorf("%w: %s", ErrHalted, r.Reason))
	case store.StateAborted:
		return e.result(ctx, ErrAborted)
	}

	if err := e.load(ctx); err != nil {
		return Result{}, err
	}

	if e.plan.Health.Kubernetes && e.opts.Cluster == nil {
		return Result{}, fmt.Errorf("rollout %s: the plan sets health.kubernetes but driver %q cannot check clusters", r.ID, e.opts.DriverName)
	}

	pid := os.Getpid()

	lease, err := e.opts.Store.AcquireLease(ctx, r.ID, hostname(), pid, leaseStale, e.opts.Force, e.opts.Actor)
	if err != nil {
		return Result{}, err
	}

	e.lease = lease
	if lease.TookOver != "" {
		e.log.Warn("lease " + lease.TookOver)
	}

	defer lease.Release(context.WithoutCancel(ctx)) //nolint:errcheck

	switch r.Desired {
	case store.DesiredAbort:
		// An abort recorded while no process ran: only reconcile in-flight nodes.
		e.stop(store.StateAborted, "aborted by operator")
	case store.DesiredPause:
		// Resuming is the operator asking to run again.
		if err := lease.SetDesired(ctx, store.DesiredRun, e.opts.Actor); err != nil {
			return Result{}, err
		}
	}

	if r.State != store.StateRunning {
		if err := lease.SetState(ctx, store.StateRunning, "resumed", e.opts.Actor); err != nil {
			return Result{}, err
		}
	}

	if e.opts.OnResumed != nil {
		e.opts.OnResumed()
	}

	ctlCtx, stopControl := context.WithCancel(ctx)
	ctlDone := make(chan struct{})

	defer func() {
		stopControl()
		<-ctlDone
	}()

	go func() {
		defer close(ctlDone)

		e.control(ctlCtx)
	}()

	stopStaging := func() {}

	if e.plan.Staging.Enabled {
		st, err := newStager(e)
		if err != nil {
			return Result{}, err
		}

		e.stager = st
		stageCtx, cancelStaging := context.WithCancel(ctx)
		stageDone := make(chan struct{})
		pending := st.pending()

		go func() {
			defer close(stageDone)

			st.run(stageCtx, pending)
		}()

		stopStaging = func() {
			cancelStaging()
			<-stageDone
		}

		defer stopStaging()
	}

	for i := range e.waves {
		if err := ctx.Err(); err != nil {
			break
		}

		// Waves keep being visited while stopping: one may hold nodes that
		// were in flight when the previous process died.
		if err := e.runWave(ctx, i); err != nil {
			if errors.Is(err, store.ErrLeaseLost) {
				e.leaseLost(err)

				break
			}

			return Result{}, err
		}
	}

	stopStaging()
	stopControl()
	<-ctlDone

	return e.finish(parent)
}

// load reads the frozen rollout definition and its progress.
func (e *execution) load(ctx context.Context) error {
	st := e.opts.Store
	id := e.rollout.ID

	if err := json.Unmarshal([]byte(e.rollout.Plan), &e.plan); err != nil {
		return fmt.Errorf("decoding stored plan: %w", err)
	}

	sites, err := st.Sites(ctx, id)
	if err != nil {
		return err
	}

	e.schedules = make(map[string]*window.Schedule, len(sites))

	// Sites sharing a time zone and windows share one (immutable)
	// Schedule: each time.LoadLocation is a fresh copy of the zone's
	// transitions, 21 MB for the 300,000-node simulated fleet's sites.
	shared := map[string]*window.Schedule{}

	for _, s := range sites {
		if sch, ok := shared[s.TimeZone+"\x00"+s.Windows]; ok {
			e.schedules[s.Name] = sch

			continue
		}

		var ws []window.Window
		if err := json.Unmarshal([]byte(s.Windows), &ws); err != nil {
			return fmt.Errorf("decoding windows of site %s: %w", s.Name, err)
		}

		sch, err := window.NewSchedule(s.TimeZone, ws)
		if err != nil {
			return fmt.Errorf("site %s: %w", s.Name, err)
		}

		e.schedules[s.Name] = sch
		shared[s.TimeZone+"\x00"+s.Windows] = sch
	}

	if e.waves, err = st.Waves(ctx, id); err != nil {
		return err
	}

	if e.created != nil {
		e.nodes, e.created = e.created, nil
	} else if e.nodes, err = st.Nodes(ctx, id); err != nil {
		return err
	}

	e.want = driver.Want{Digest: plan.ImageDigest(e.rollout.Image), Version: e.rollout.Version, Schematic: e.plan.Schematic}
	e.controlPlanes = map[string]int{}
	e.waveFailures = map[int]int{}

	for _, n := range e.nodes {
		if n.Role == inventory.RoleControlPlane {
			e.controlPlanes[n.Cluster]++
		}

		switch n.State {
		case store.NodeFailed:
			e.waveFailures[n.Wave]++
			e.failures++
		case store.NodeRequested, store.NodeAccepted, store.NodeRollingBack:
			e.inFlightAtLoad++
		}
	}

	e.inFlightLeft = e.inFlightAtLoad
	e.resumedAt = time.Now()

	if e.inFlightAtLoad > 0 {
		e.log.Info("reconciling nodes left in flight by a previous process", "nodes", e.inFlightAtLoad)
	}

	e.maxFailures = plan.Allowed(e.plan.Budget.MaxFailures, e.plan.Budget.MaxFailurePercent, len(e.nodes))

	e.regionSem = map[string]chan struct{}{}
	for reg, c := range e.plan.RegionCaps {
		if c > 0 {
			e.regionSem[reg] = make(chan struct{}, c)
		}
	}

	e.bandwidthSem = map[string]chan struct{}{}
	for bw, c := range e.plan.BandwidthCaps {
		if c > 0 {
			e.bandwidthSem[bw] = make(chan struct{}, c)
		}
	}

	e.stopCh = make(chan struct{})

	return nil
}

// control polls operator requests and keeps the lease fresh.
func (e *execution) control(ctx context.Context) {
	tick := time.NewTicker(e.opts.ControlPoll)
	defer tick.Stop()

	lastBeat := time.Now()

	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}

		d, err := e.opts.Store.Desired(ctx, e.rollout.ID)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Warn("reading operator requests", "err", err)
			}

			continue
		}

		switch d {
		case store.DesiredPause:
			e.stop(store.StatePaused, "paused by operator")
		case store.DesiredAbort:
			e.stop(store.StateAborted, "aborted by operator")
		}

		if time.Since(lastBeat) > 5*time.Second {
			lastBeat = time.Now()
			if err := e.lease.Heartbeat(ctx); err != nil && ctx.Err() == nil {
				if errors.Is(err, store.ErrLeaseLost) {
					e.leaseLost(err)

					return
				}

				e.log.Warn("refreshing lease", "err", err)
			}
		}
	}
}

// stop asks workers to start no new node; in-flight nodes finish.
// The first reason wins except that abort overrides pause.
func (e *execution) stop(kind, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()

	switch {
	case e.stopKind == "":
		close(e.stopCh)
	case e.stopKind == store.StatePaused && kind == store.StateAborted:
	default:
		return
	}

	if e.stopKind == "" || kind == store.StateAborted {
		e.log.Info("stopping rollout", "kind", kind, "reason", reason)
	}

	e.stopKind, e.stopReason = kind, reason
}

func (e *execution) stopped() string {
	e.mu.Lock()
	defer e.mu.Unlock()

	return e.stopKind
}

// addFailure counts a failed node and halts the rollout when a budget is spent.
func (e *execution) addFailure(wave int) {
	e.mu.Lock()
	e.waveFailures[wave]++
	e.failures++
	wf, total := e.waveFailures[wave], e.failures
	e.mu.Unlock()

	e.checkBudget(wave, wf, total)
}

func (e *execution) checkBudget(wave, waveFailures, total int) {
	w := e.waves[wave]

	switch {
	case waveFailures > w.MaxFailures:
		e.stop(store.StateHalted, fmt.Sprintf("wave %d %q: %d failed nodes, budget %d", wave, w.Name, waveFailures, w.MaxFailures))
	case total > e.maxFailures:
		e.stop(store.StateHalted, fmt.Sprintf("rollout: %d failed nodes, budget %d", total, e.maxFailures))
	}
}

// finish records how the execution ended and builds the result.
func (e *execution) finish(ctx context.Context) (Result, error) {
	st, id, actor := e.opts.Store, e.rollout.ID, e.opts.Actor
	bg := context.WithoutCancel(ctx)

	kind, reason := e.stopKind, e.stopReason

	if e.leaseErr != nil {
		// Nothing may be written: the rollout belongs to another process.
		res, _ := Summarise(bg, st, id)

		return res, fmt.Errorf("stopped: %w", e.leaseErr)
	}

	if e.storeErr != nil {
		// Best effort: the database may be failing for good.
		e.lease.SetState(bg, store.StatePaused, "database write failed: "+e.storeErr.Error(), actor) //nolint:errcheck

		return Result{RolloutID: id, Name: e.rollout.Name, State: store.StatePaused}, fmt.Errorf("recording progress: %w", e.storeErr)
	}

	switch {
	case kind != "":
		if err := e.lease.SetState(bg, kind, reason, actor); err != nil {
			return Result{}, err
		}

		var sentinel error

		switch kind {
		case store.StateHalted:
			sentinel = fmt.Errorf("%w: %s", ErrHalted, reason)
		case store.StatePaused:
			sentinel = ErrPaused
		default:
			sentinel = ErrAborted
		}

		return e.result(bg, sentinel)
	case ctx.Err() != nil:
		// Interrupted: the state stays "running" so resume picks it up.
		return e.result(bg, fmt.Errorf("%w: %w", ErrInterrupted, ctx.Err()))
	}

	if err := e.lease.SetState(bg, store.StateCompleted, "", actor); err != nil {
		return Result{}, err
	}

	return e.result(bg, nil)
}

func (e *execution) result(ctx context.Context, runErr error) (Result, error) {
	// Every node worker has returned by now, and each node row in e.nodes
	// was updated right after its write was committed, so the rows in
	// memory are what the store holds. Counting them spares a query that
	// visits every row of the rollout through the (rollout_id, id) key in
	// id order, not in the order the rows are stored: at 300,000 nodes a
	// page read per row, seconds of CPU at the end of a rollout.
	res, err := summarise(ctx, e.opts.Store, e.rollout.ID, func(string) (store.Counts, int, error) {
		return e.counts(), e.rolledBack(), nil
	})
	if err != nil {
		return res, err
	}

	return res, runErr
}

// counts are the states of the execution's node rows per wave, as
// store.NodeCounts reads them.
func (e *execution) counts() store.Counts {
	out := store.Counts{}

	for k := range e.nodes {
		n := &e.nodes[k]
		if out[n.Wave] == nil {
			out[n.Wave] = map[string]int{}
		}

		out[n.Wave][n.State]++
	}

	return out
}

func (e *execution) rolledBack() int {
	rb := 0

	for k := range e.nodes {
		if e.nodes[k].RolledBack {
			rb++
		}
	}

	return rb
}

// runWave executes wave i; it returns an error only when the store fails.
func (e *execution) runWave(ctx context.Context, i int) error {
	w := e.waves[i]
	if w.State == store.WaveDone {
		return nil
	}

	// A budget may have been spent just before a crash, before the halt was recorded.
	e.mu.Lock()
	wf, total := e.waveFailures[i], e.failures
	e.mu.Unlock()
	e.checkBudget(i, wf, total)

	if e.stopped() != "" && !e.waveInFlight(i) {
		return nil
	}

	if w.State == store.WavePending {
		if err := e.lease.SetWaveState(ctx, i, store.WaveRunning, e.opts.Actor); err != nil {
			return err
		}
	}

	e.log.Info("wave started", "wave", i, "name", w.Name, "clusters", w.Clusters, "nodes", w.Nodes)

	var clusters [][]*store.Node

	index := map[string]int{}

	for k := range e.nodes {
		n := &e.nodes[k]
		if n.Wave != i {
			continue
		}

		ci, ok := index[n.Cluster]
		if !ok {
			ci = len(clusters)
			index[n.Cluster] = ci
			clusters = append(clusters, nil)
		}

		clusters[ci] = append(clusters[ci], n)
	}

	e.dispatch(ctx, i, w, clusters)

	for _, n := range e.nodes {
		if n.Wave == i && !terminal(n.State) {
			return nil // stopped before the wave finished
		}
	}

	e.log.Info("wave finished", "wave", i, "name", w.Name, "failures", e.waveFailures[i])

	if ctx.Err() != nil {
		return nil // the lease was lost or the process interrupted mid-wave
	}

	return e.lease.SetWaveState(context.WithoutCancel(ctx), i, store.WaveDone, e.opts.Actor)
}

// dispatch hands the wave's clusters to its workers. A worker is free
// before a cluster is picked, and the pick is the first cluster (in
// inventory order) whose site is open now or that has nodes in flight: a
// closed site never holds a worker while an open one waits. When every
// remaining cluster is closed the dispatcher (holding the free worker, so at
// most one sleeper when concurrency is 1) sleeps until the next opening.
func (e *execution) dispatch(ctx context.Context, wave int, w store.Wave, clusters [][]*store.Node) {
	workers := min(max(w.Concurrency, 1), len(clusters))
	jobs := make(chan []*store.Node)
	free := make(chan struct{}, workers)

	var wg sync.WaitGroup

	for range workers {
		free <- struct{}{}

		wg.Go(func() {
			for c := range jobs {
				e.runCluster(ctx, wave, c)
				free <- struct{}{}
			}
		})
	}

	defer func() {
		close(jobs)
		wg.Wait()
	}()

	remaining := clusters

	for len(remaining) > 0 {
		select {
		case <-free:
		case <-ctx.Done():
			return
		}

		for {
			stopping := e.stopped() != "" || ctx.Err() != nil
			now := e.opts.Clock.Now()
			pick, next := -1, time.Time{}

			for k, c := range remaining {
				// Clusters with in-flight nodes are always handed out: their
				// nodes must be reconciled even when the rollout is stopping.
				if inFlight(c) {
					pick = k

					break
				}

				if stopping {
					continue
				}

				sch := e.schedules[c[0].Site]
				if sch == nil || sch.Open(now) {
					pick = k

					break
				}

				if o := sch.NextOpen(now); next.IsZero() || o.Before(next) {
					next = o
				}
			}

			if pick >= 0 {
				c := remaining[pick]
				if pick == 0 {
					remaining = remaining[1:] // the common case: no copy
				} else {
					remaining = append(remaining[:pick:pick], remaining[pick+1:]...)
				}
				jobs <- c

				break
			}

			if stopping || next.IsZero() {
				return
			}

			wait := min(next.Sub(now), e.opts.ControlPoll)
			if wait <= 0 {
				wait = time.Millisecond
			}

			if e.opts.Clock.Sleep(ctx, wait) != nil {
				return
			}
		}
	}
}

func (e *execution) waveInFlight(i int) bool {
	for _, n := range e.nodes {
		if n.Wave == i && isInFlight(n.State) {
			return true
		}
	}

	return false
}

// isInFlight: the node may have been changed and its outcome is not recorded yet.
func isInFlight(state string) bool {
	return state == store.NodeRequested || state == store.NodeAccepted || state == store.NodeRollingBack
}

func terminal(state string) bool {
	return state == store.NodeDone || state == store.NodeFailed || state == store.NodeSkipped
}

func inFlight(c []*store.Node) bool {
	for _, n := range c {
		if isInFlight(n.State) {
			return true
		}
	}

	return false
}

// runCluster upgrades one cluster: control plane nodes one at a time, then
// workers maxUnavailable at a time. After a failure the cluster's remaining
// nodes are skipped so a broken image never takes a whole cluster down.
func (e *execution) runCluster(ctx context.Context, wave int, nodes []*store.Node) {
	var cps, workers []*store.Node

	for _, n := range nodes {
		if n.Role == inventory.RoleControlPlane {
			cps = append(cps, n)
		} else {
			workers = append(workers, n)
		}
	}

	var (
		mu     sync.Mutex
		failed = false
	)

	for _, n := range nodes {
		if n.State == store.NodeFailed {
			failed = true
		}
	}

	// In-flight nodes first: they were touched before a crash and hold a slot
	// of the cluster's unavailability budget.
	ordered := func(list []*store.Node) []*store.Node {
		var first, rest []*store.Node

		for _, n := range list {
			if isInFlight(n.State) {
				first = append(first, n)
			} else {
				rest = append(rest, n)
			}
		}

		return append(first, rest...)
	}

	step := func(n *store.Node) {
		mu.Lock()
		f := failed
		mu.Unlock()

		if f && n.State == store.NodePending {
			e.skip(ctx, n, "another node of the cluster failed or could not be reached")

			return
		}

		if e.processNode(ctx, wave, n) {
			mu.Lock()
			failed = true
			mu.Unlock()
		}
	}

	for _, n := range ordered(cps) {
		step(n)
	}

	batch := max(e.plan.MaxUnavailable, 1)
	ws := ordered(workers)

	for len(ws) > 0 {
		k := min(batch, len(ws))

		if k == 1 {
			// One at a time (maxUnavailable 1, the default): no goroutine
			// (and no new stack to grow) per node.
			step(ws[0])

			ws = ws[1:]

			continue
		}

		var wg sync.WaitGroup
		for _, n := range ws[:k] {
			wg.Go(func() { step(n) })
		}

		wg.Wait()

		ws = ws[k:]
	}
}

func (e *execution) skip(ctx context.Context, n *store.Node, why string) {
	if e.stopped() != "" || ctx.Err() != nil {
		return // leave it pending: a resumed or new rollout decides
	}

	tr := store.Transition{Node: n.ID, Subject: n.Cluster + "/" + n.Name, State: store.NodeSkipped, Detail: why}
	if err := e.lease.RecordNode(context.WithoutCancel(ctx), e.opts.Actor, tr); err != nil {
		e.storeFailed(fmt.Errorf("recording %s as skipped: %w", tr.Subject, err))

		return
	}

	n.State = store.NodeSkipped
}

func (e *execution) target(n *store.Node) driver.Target {
	return driver.Target{Cluster: n.Cluster, Node: n.Name, Endpoint: n.Endpoint, Role: n.Role, Talosconfig: n.Talosconfig,
		ControlPlanes: e.controlPlanes[n.Cluster]}
}

// errStop means the rollout is stopping and the node was not started.
var errStop = errors.New("stopping")

// admit waits until node n may start: the rollout is running, its site's
// window is open and its region and bandwidth class have a free slot.
// release returns the slots.
func (e *execution) admit(ctx context.Context, n *store.Node) (release func(), err error) {
	for {
		if err := e.waitWindow(ctx, n); err != nil {
			return nil, err
		}

		release, err := e.acquireCaps(ctx, n, true)
		if err != nil {
			return nil, err
		}

		// The window may have closed while waiting for a slot.
		if e.fits(n, e.opts.Clock.Now()) {
			return release, nil
		}

		release()
	}
}

// opEstimate is the longest one node operation may take: the Upgrade call,
// the health gate and the soak. A node starts only if that fits in what is
// left of its window.
func (e *execution) opEstimate() time.Duration {
	return e.plan.NodeWindowNeed()
}

// fits reports whether n's site window is open at now and the whole node
// operation fits before it closes.
func (e *execution) fits(n *store.Node, now time.Time) bool {
	sch := e.schedules[n.Site]
	if sch == nil || sch.Always() {
		return true
	}

	open, until := sch.OpenUntil(now)

	return open && until.Sub(now) >= e.opEstimate()
}

// waitWindow waits until the rollout is running and the whole node
// operation fits in n's site window.
func (e *execution) waitWindow(ctx context.Context, n *store.Node) error {
	sch := e.schedules[n.Site]

	for {
		if e.stopped() != "" {
			return errStop
		}

		if err := ctx.Err(); err != nil {
			return err
		}

		now := e.opts.Clock.Now()
		if e.fits(n, now) {
			return nil
		}

		next := sch.NextOpen(now)
		if open, until := sch.OpenUntil(now); open {
			next = sch.NextOpen(until) // too little left of this window
		}

		wait := min(next.Sub(now), e.opts.ControlPoll)
		if wait <= 0 {
			wait = time.Millisecond
		}

		if err := e.opts.Clock.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// acquireCaps takes n's region and bandwidth slots. Nodes found in flight
// after a crash take them too (honourStop false: they are reconciled even
// while the rollout stops), so caps count every node in flight.
func (e *execution) acquireCaps(ctx context.Context, n *store.Node, honourStop bool) (release func(), err error) {
	var held []chan struct{}

	release = func() {
		for _, c := range held {
			<-c
		}
	}

	stop := e.stopCh
	if !honourStop {
		stop = nil // a nil channel never fires
	}

	for _, sem := range []chan struct{}{e.regionSem[n.Region], e.bandwidthSem[n.Bandwidth]} {
		if sem == nil {
			continue
		}

		select {
		case sem <- struct{}{}:
			held = append(held, sem)
		case <-stop:
			release()

			return nil, errStop
		case <-ctx.Done():
			release()

			return nil, ctx.Err()
		}
	}

	return release, nil
}
