package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// stager pulls the rollout's image onto its pending nodes ahead of their
// maintenance windows (plan staging), inside each site's download windows,
// a few pulls at a time per site.
//
// Every step is recorded per node in the store (store.Staging, under the
// lease: pending, pulling, staged, failed with the reason), so `rollout
// status` shows staging progress from any process. A resumed rollout does
// not trust a "staged" record blindly: the node may have rebooted (labos
// keeps pulled images until the next boot) or had its image store
// cleaned. It asks the node (driver.StageChecker: ImageService.List) and
// pulls again only if the node no longer holds the image; a node whose
// driver cannot say is asked to pull again, which costs a node that holds
// the image next to nothing (the pull finds it). A check moves no image
// bytes, so it runs at once, outside the download windows. A switch that
// still finds the image gone pulls it then (nodeRun.send).
type stager struct {
	e       *execution
	all     chan struct{}
	timeout time.Duration

	mu    sync.Mutex
	sites map[string]chan struct{}
	state map[int]stageState
	sched map[string]*window.Schedule
}

type stageState struct {
	running bool
	done    bool
	err     error
}

func newStager(e *execution) (*stager, error) {
	s := &stager{
		e: e, all: make(chan struct{}, max(e.plan.Staging.Concurrency, 1)), timeout: e.plan.Staging.Timeout.D(),
		sites: map[string]chan struct{}{}, state: map[int]stageState{}, sched: map[string]*window.Schedule{},
	}

	// download windows in each site's own time zone
	for site, sch := range e.schedules {
		d, err := window.NewSchedule(sch.Location().String(), e.plan.Staging.Windows)
		if err != nil {
			return nil, fmt.Errorf("staging windows for site %s: %w", site, err)
		}

		s.sched[site] = d
	}

	return s, nil
}

// pending copies the nodes to stage before any node work starts (the
// engine changes its records while the stager runs) and marks them queued,
// so no node is switched before its pull ran.
func (s *stager) pending() []store.Node {
	var out []store.Node

	for _, n := range s.e.nodes {
		if n.State == store.NodePending {
			out = append(out, n)
			s.set(n.ID, stageState{running: true}) // queued counts as running
		}
	}

	return out
}

// run stages nodes (copies, in wave order) until ctx ends. It first
// records every node queued, in one write; nodes a previous process
// recorded staged keep that record until their node is asked.
func (s *stager) run(ctx context.Context, nodes []store.Node) {
	recorded, err := s.e.opts.Store.Staging(ctx, s.e.rollout.ID)
	if err != nil {
		s.failAll(nodes, err)
		s.e.storeFailed(fmt.Errorf("reading staging records: %w", err))

		return
	}

	var queued []store.Staging

	for _, n := range nodes {
		if recorded[n.ID].State != store.StageStaged {
			queued = append(queued, store.Staging{Node: n.ID, Subject: n.Cluster + "/" + n.Name, State: store.StagePending})
		}
	}

	if err := s.e.lease.RecordStaging(ctx, s.e.opts.Actor, queued...); err != nil {
		s.failAll(nodes, err)
		s.recordFailed(err)

		return
	}

	var wg sync.WaitGroup

	defer wg.Wait()

	for _, n := range nodes {
		select {
		case <-ctx.Done():
			return
		case s.all <- struct{}{}:
		}

		wg.Go(func() {
			defer func() { <-s.all }()

			s.set(n.ID, s.stage(ctx, &n, recorded[n.ID].State == store.StageStaged))
		})
	}
}

// failAll marks nodes not staged: the stager cannot record what it does,
// so it does nothing (no node is touched without a record).
func (s *stager) failAll(nodes []store.Node, err error) {
	for _, n := range nodes {
		s.set(n.ID, stageState{err: fmt.Errorf("recording staging: %w", err)})
	}
}

// recordFailed stops the rollout when a staging record cannot be written
// (as for any state write), unless the rollout is stopping anyway.
func (s *stager) recordFailed(err error) {
	if errors.Is(err, context.Canceled) {
		return
	}

	s.e.storeFailed(fmt.Errorf("recording staging: %w", err))
}

// record writes one staging record; false when it could not be written,
// and then the node must not be asked anything.
func (s *stager) record(ctx context.Context, n *store.Node, state, reason string, bytes int64) bool {
	rec := store.Staging{Node: n.ID, Subject: n.Cluster + "/" + n.Name, State: state, Reason: reason, Bytes: bytes}

	if err := s.e.lease.RecordStaging(context.WithoutCancel(ctx), s.e.opts.Actor, rec); err != nil {
		s.recordFailed(err)

		return false
	}

	return true
}

func (s *stager) set(id int, st stageState) {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.state[id] = st
}

func (s *stager) siteSlot(site string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()

	c, ok := s.sites[site]
	if !ok {
		c = make(chan struct{}, max(s.e.plan.Staging.PerSite, 1))
		s.sites[site] = c
	}

	return c
}

// errNotRecorded: a staging record could not be written, so the node was
// not asked to pull.
var errNotRecorded = errors.New("staging record could not be written")

// stage waits for the site's download window and a slot on its link, then
// has the node pull the image, retrying until the staging timeout. A node
// recorded staged by a previous process is asked first whether it still
// holds the image.
func (s *stager) stage(ctx context.Context, n *store.Node, recordedStaged bool) stageState {
	subject := n.Cluster + "/" + n.Name

	if recordedStaged {
		held, size, why := s.recheck(ctx, n)
		if ctx.Err() != nil {
			return stageState{err: ctx.Err()}
		}

		if held {
			if !s.record(ctx, n, store.StageStaged, "re-checked on resume: the node holds the image", size) {
				return stageState{err: errNotRecorded}
			}

			s.e.log.Info("node still holds its staged image", "node", subject)

			return stageState{done: true}
		}

		if !s.record(ctx, n, store.StagePending, why, 0) {
			return stageState{err: errNotRecorded}
		}

		s.e.log.Info("staging again", "node", subject, "why", why)
	}

	if sch := s.sched[n.Site]; sch != nil {
		for now := s.e.opts.Clock.Now(); !sch.Open(now); now = s.e.opts.Clock.Now() {
			if err := s.e.opts.Clock.Sleep(ctx, min(sch.NextOpen(now).Sub(now), s.e.opts.ControlPoll)); err != nil {
				return stageState{err: err}
			}
		}
	}

	slot := s.siteSlot(n.Site)

	select {
	case <-ctx.Done():
		return stageState{err: ctx.Err()}
	case slot <- struct{}{}:
	}

	defer func() { <-slot }()

	parent := ctx

	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	var last error

	for attempt := 0; ; attempt++ {
		why := ""
		if last != nil {
			why = fmt.Sprintf("attempt %d failed: %v", attempt, last)
		}

		if !s.record(ctx, n, store.StagePulling, why, 0) {
			return stageState{err: errNotRecorded}
		}

		size, err := s.pull(ctx, n)
		if last = err; last == nil {
			if !s.record(ctx, n, store.StageStaged, "", size) {
				return stageState{err: errNotRecorded}
			}

			s.e.log.Info("node staged", "node", subject)

			return stageState{done: true}
		}

		if parent.Err() != nil {
			return s.interrupted(ctx, n, parent.Err())
		}

		s.e.log.Warn("staging failed", "node", subject, "attempt", attempt+1, "err", last)

		// a few seconds between tries, up to a minute: a site link that
		// drops comes back, and the staging timeout bounds the whole
		if err := s.e.opts.Clock.Sleep(ctx, min(time.Duration(1<<min(attempt, 6))*time.Second, time.Minute)); err != nil {
			if parent.Err() != nil {
				return s.interrupted(ctx, n, parent.Err())
			}

			// the staging timeout: say why for status
			s.record(ctx, n, store.StageFailed, fmt.Sprintf("%v (after %d attempts, staging timeout %s)", last, attempt+1, s.timeout), 0)

			return stageState{err: last}
		}
	}
}

// interrupted records a pull cut short by the rollout stopping as pending
// again, so status does not show a pull running in a stopped rollout (a
// resumed rollout pulls again). When the stop is a lost lease the write
// checks the lease and fails: nothing is recorded over the new executor.
func (s *stager) interrupted(ctx context.Context, n *store.Node, why error) stageState {
	s.record(ctx, n, store.StagePending, "interrupted: the rollout stopped during the pull; a resumed rollout pulls again", 0)

	return stageState{err: why}
}

// recheck asks a node recorded staged whether it still holds the image;
// why says what the stager concludes when it does not (or cannot say).
func (s *stager) recheck(ctx context.Context, n *store.Node) (held bool, size int64, why string) {
	c, cancel := context.WithTimeout(ctx, s.e.callTimeout())
	defer cancel()

	node, err := s.e.opts.Driver.Open(c, s.e.target(n))
	if err != nil {
		return false, 0, fmt.Sprintf("recorded staged, but on resume the node could not be asked (%v): pulling again", err)
	}
	defer node.Close() //nolint:errcheck

	sc, ok := node.(driver.StageChecker)
	if !ok {
		return false, 0, "recorded staged; on resume the driver cannot ask the node what it holds: pulling again (a held image is found at once)"
	}

	held, size, err = sc.Staged(c, s.e.rollout.Image)

	switch {
	case err != nil:
		return false, 0, fmt.Sprintf("recorded staged, but on resume the node could not be asked (%v): pulling again", err)
	case !held:
		return false, 0, "recorded staged, but on resume the node no longer holds the image: pulling again"
	}

	return true, size, ""
}

// pull has the node pull the image; size is what the node then reports
// holding (0: it cannot say).
func (s *stager) pull(ctx context.Context, n *store.Node) (int64, error) {
	node, err := s.e.opts.Driver.Open(ctx, s.e.target(n))
	if err != nil {
		return 0, err
	}
	defer node.Close() //nolint:errcheck

	st, ok := node.(driver.Stager)
	if !ok {
		return 0, errors.New("the driver cannot stage")
	}

	c, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	if err := st.Stage(c, s.e.rollout.Image); err != nil {
		return 0, err
	}

	// the size for status; a node that cannot say, or lists the image
	// under a name the check does not recognise, is taken at its word (the
	// switch refuses an image that is not there, and then pulls it)
	sc, ok := node.(driver.StageChecker)
	if !ok {
		return 0, nil
	}

	c, cancel = context.WithTimeout(ctx, s.e.callTimeout())
	defer cancel()

	held, size, err := sc.Staged(c, s.e.rollout.Image)
	if err == nil && !held {
		s.e.log.Warn("the node took the pull but does not list the image; a resumed rollout will pull again", "node", n.Cluster+"/"+n.Name)
	}

	return size, nil
}

// status says whether node n may be switched: ready, or still staging
// (wait), or why not. Nodes the stager never had (in flight when the
// rollout resumed) are ready: their switch pulls if it must.
func (s *stager) status(n *store.Node) (ready, running bool, why string) {
	s.mu.Lock()
	st, ok := s.state[n.ID]
	s.mu.Unlock()

	switch {
	case !ok, st.done:
		return true, false, ""
	case st.running:
		return false, true, "staging did not finish before its maintenance window closed"
	default:
		return false, false, fmt.Sprintf("staging failed: %v", st.err)
	}
}

// awaitStaged waits while n's image is still being staged and n's window
// leaves room for its operation; "" when n may be switched, else why not.
func (e *execution) awaitStaged(ctx context.Context, n *store.Node) (string, error) {
	for {
		ready, running, why := e.stager.status(n)

		switch {
		case ready:
			return "", nil
		case !running || !e.fits(n, e.opts.Clock.Now()):
			return why, nil
		}

		if err := e.opts.Clock.Sleep(ctx, e.opts.ControlPoll); err != nil {
			return "", err
		}
	}
}
