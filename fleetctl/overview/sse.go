package overview

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// broadcaster computes each watched rollout's detail once per poll and hands
// the same encoded event to every page watching it: ten pages cost one
// query set, not ten. It polls only while someone watches.
type broadcaster struct {
	compute func(ctx context.Context, id string) ([]byte, error)
	poll    time.Duration

	mu     sync.Mutex
	topics map[string]*topic
	done   chan struct{}
	wg     sync.WaitGroup
}

type topic struct {
	subs map[chan []byte]struct{}
	last []byte
}

func newBroadcaster(compute func(context.Context, string) ([]byte, error), poll time.Duration) *broadcaster {
	return &broadcaster{compute: compute, poll: poll, topics: map[string]*topic{}, done: make(chan struct{})}
}

func (b *broadcaster) close() {
	b.mu.Lock()
	select {
	case <-b.done:
	default:
		close(b.done)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// subscribe returns a channel of events for rollout id and a cancel func.
func (b *broadcaster) subscribe(id string) (<-chan []byte, func()) {
	ch := make(chan []byte, 4)

	b.mu.Lock()
	t := b.topics[id]

	if t == nil {
		t = &topic{subs: map[chan []byte]struct{}{}}
		b.topics[id] = t
		b.wg.Add(1)

		go b.run(id, t)
	}

	t.subs[ch] = struct{}{}
	if t.last != nil {
		ch <- t.last
	}
	b.mu.Unlock()

	return ch, func() {
		b.mu.Lock()
		delete(t.subs, ch)
		b.mu.Unlock()
	}
}

// run polls one rollout until nobody watches it.
func (b *broadcaster) run(id string, t *topic) {
	defer b.wg.Done()

	tick := time.NewTicker(b.poll)
	defer tick.Stop()

	for {
		ev, err := b.compute(context.Background(), id)
		if err != nil {
			ev, _ = json.Marshal(apiError{Error: err.Error()})
		}

		b.mu.Lock()
		if len(t.subs) == 0 {
			delete(b.topics, id)
			b.mu.Unlock()

			return
		}

		if !bytes.Equal(ev, t.last) {
			t.last = ev
			for ch := range t.subs {
				select {
				case ch <- ev:
				default: // a slow page skips an update; the next one is complete anyway
				}
			}
		}
		b.mu.Unlock()

		select {
		case <-b.done:
			return
		case <-tick.C:
		}
	}
}

func (s *Server) statusEvent(ctx context.Context, id string) ([]byte, error) {
	d, err := s.rolloutDetail(ctx, id)
	if err != nil {
		return nil, err
	}

	return json.Marshal(d)
}

// events streams the rollout's detail as server-sent events ("status"),
// one each time it changes, and a comment every 15 s to keep proxies open.
func (s *Server) events(w http.ResponseWriter, r *http.Request, _ Identity) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported by this connection")

		return
	}

	id := rolloutID(r)
	if _, err := s.opts.Store.Rollout(r.Context(), id); err != nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("rollout %q: %v", r.PathValue("id"), err))

		return
	}

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fl.Flush()

	ch, cancel := s.hub.subscribe(id)
	defer cancel()

	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()

	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.hub.done:
			return
		case <-keep.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case ev := <-ch:
			fmt.Fprintf(w, "event: status\ndata: %s\n\n", ev)
		}

		fl.Flush()
	}
}
