package build

import (
	"sync"
	"time"
)

// sequencedProgress hands the events of steps running in parallel to a
// Progress one step at a time, in the given order: a Progress (the CLI's
// live line on a terminal) renders one running step. A step's events are
// held until every step before it is done; durations are each step's own.
type sequencedProgress struct {
	p     Progress
	order []string

	mu        sync.Mutex
	next      int // index in order of the step whose events pass now
	started   map[string]bool
	announced map[string]bool
	done      map[string]doneEvent
}

type doneEvent struct {
	d   time.Duration
	err error
}

func newSequencedProgress(p Progress, order []string) *sequencedProgress {
	return &sequencedProgress{
		p: p, order: order,
		started: map[string]bool{}, announced: map[string]bool{}, done: map[string]doneEvent{},
	}
}

func (s *sequencedProgress) StepStart(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.started[name] = true
	s.flush(false)
}

func (s *sequencedProgress) StepDone(name string, d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.done[name] = doneEvent{d, err}
	s.flush(false)
}

// finish passes on what is left once every step has returned, skipping
// steps that never started (cancelled before they began).
func (s *sequencedProgress) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.flush(true)
}

func (s *sequencedProgress) flush(final bool) {
	for s.next < len(s.order) {
		name := s.order[s.next]

		if s.started[name] && !s.announced[name] {
			s.announced[name] = true

			if s.p != nil {
				s.p.StepStart(name)
			}
		}

		ev, ok := s.done[name]
		if !ok {
			if final && !s.started[name] {
				s.next++

				continue
			}

			return
		}

		if s.p != nil {
			s.p.StepDone(name, ev.d, ev.err)
		}

		s.next++
	}
}
