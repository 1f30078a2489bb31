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
// a few pulls at a time per site. What it learns lives in memory only: a
// resumed rollout stages again, which costs a node that already holds the
// image next to nothing (the pull finds it), and a switch that finds the
// image missing pulls it then (nodeRun.send).
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

// run stages nodes (copies, in wave order) until ctx ends.
func (s *stager) run(ctx context.Context, nodes []store.Node) {
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

			s.set(n.ID, s.stage(ctx, &n))
		})
	}
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

// stage waits for the site's download window and a slot on its link, then
// has the node pull the image, retrying until the staging timeout.
func (s *stager) stage(ctx context.Context, n *store.Node) stageState {
	subject := n.Cluster + "/" + n.Name

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

	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	var last error

	for attempt := 0; ; attempt++ {
		if last = s.pull(ctx, n); last == nil {
			s.e.log.Info("node staged", "node", subject)

			return stageState{done: true}
		}

		s.e.log.Warn("staging failed", "node", subject, "attempt", attempt+1, "err", last)

		// a few seconds between tries, up to a minute: a site link that
		// drops comes back, and the staging timeout bounds the whole
		if err := s.e.opts.Clock.Sleep(ctx, min(time.Duration(1<<min(attempt, 6))*time.Second, time.Minute)); err != nil {
			return stageState{err: last}
		}
	}
}

func (s *stager) pull(ctx context.Context, n *store.Node) error {
	node, err := s.e.opts.Driver.Open(ctx, s.e.target(n))
	if err != nil {
		return err
	}
	defer node.Close() //nolint:errcheck

	st, ok := node.(driver.Stager)
	if !ok {
		return errors.New("the driver cannot stage")
	}

	c, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	return st.Stage(c, s.e.rollout.Image)
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
