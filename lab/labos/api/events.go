package api

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/rs/xid"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// EventsKept is how many events a node keeps for Events' tail options.
// Talos keeps a ring of its own size; clients only rely on recent events.
const EventsKept = 1000

// Events is the node's event stream as Talos's machined keeps it: events
// carry xid IDs (time-ordered, so a client resuming with tail_id after a
// reboot gets every event of the new boot), an actor ID tying them to the
// API call that caused them, and a typed payload.
type Events struct {
	mu      sync.Mutex
	ring    []event
	written int           // events ever published; ring[i%len] holds event i
	wake    chan struct{} // closed and replaced on every publish
}

type event struct {
	id    xid.ID
	actor string
	msg   proto.Message
}

// NewEvents returns an empty stream.
func NewEvents() *Events {
	return &Events{ring: make([]event, EventsKept), wake: make(chan struct{})}
}

// Publish appends msg to the stream on behalf of actor ("" for the node itself).
func (e *Events) Publish(actor string, msg proto.Message) {
	e.mu.Lock()
	defer e.mu.Unlock()

	e.ring[e.written%len(e.ring)] = event{id: xid.New(), actor: actor, msg: msg}
	e.written++

	close(e.wake)
	e.wake = make(chan struct{})
}

// start returns the index of the first event a watcher with these tail
// options receives, following Talos's rules: tail_events counts back from
// now (-1: everything kept), else tail_id starts after that ID, else
// tail_seconds starts at events that recent, else only new events.
func (e *Events) start(req *machine.EventsRequest) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()

	oldest := max(e.written-len(e.ring), 0)
	kept := e.written - oldest
	at := func(i int) event { return e.ring[(oldest+i)%len(e.ring)] }

	switch {
	case req.GetTailEvents() < 0:
		return oldest, nil
	case req.GetTailEvents() > 0:
		return max(e.written-int(req.GetTailEvents()), oldest), nil
	case req.GetTailId() != "":
		tail, err := xid.FromString(req.GetTailId())
		if err != nil {
			return 0, status.Errorf(codes.InvalidArgument, "events: parsing tail_id: %v", err)
		}

		return oldest + sort.Search(kept, func(i int) bool { return at(i).id.Compare(tail) > 0 }), nil
	case req.GetTailSeconds() != 0:
		since := time.Now().Add(-time.Duration(req.GetTailSeconds()) * time.Second)

		return oldest + sort.Search(kept, func(i int) bool { return at(i).id.Time().After(since) }), nil
	default:
		return e.written, nil
	}
}

// next waits for event i; ok is false when it was overwritten before it
// was read (the watcher was too slow: Talos ends the stream then too).
func (e *Events) next(ctx context.Context, i int) (ev event, ok bool, err error) {
	for {
		e.mu.Lock()
		wake := e.wake

		switch {
		case i < e.written-len(e.ring):
			e.mu.Unlock()

			return event{}, false, nil
		case i < e.written:
			ev = e.ring[i%len(e.ring)]
			e.mu.Unlock()

			return ev, true, nil
		}

		e.mu.Unlock()

		select {
		case <-ctx.Done():
			return event{}, false, ctx.Err()
		case <-wake:
		}
	}
}

// Follow calls fn with every event kept and then each new one, in order,
// until ctx ends or fn fails: what Talos's event sink controller does to
// send the node's events to a SideroLink hub. An event overwritten before
// it was read is skipped (the ring keeps EventsKept).
func (e *Events) Follow(ctx context.Context, fn func(id string, msg proto.Message) error) error {
	i, _ := e.start(&machine.EventsRequest{TailEvents: -1})

	for {
		ev, ok, err := e.next(ctx, i)
		if err != nil {
			return err
		}

		i++

		if !ok {
			e.mu.Lock()
			i = max(i, e.written-len(e.ring))
			e.mu.Unlock()

			continue
		}

		if err := fn(ev.id.String(), ev.msg); err != nil {
			return err
		}
	}
}

func toMachineEvent(ev event) (*machine.Event, error) {
	var data *anypb.Any

	if ev.msg != nil {
		b, err := proto.Marshal(ev.msg)
		if err != nil {
			return nil, fmt.Errorf("marshaling event: %w", err)
		}

		data = &anypb.Any{TypeUrl: "talos/runtime/" + string(ev.msg.ProtoReflect().Descriptor().FullName()), Value: b}
	} else {
		data = &anypb.Any{}
	}

	return &machine.Event{Data: data, Id: ev.id.String(), ActorId: ev.actor}, nil
}

// Events streams the node's events: first an empty event (Talos's "hello",
// which clients skip), then the tail the request asks for, then new events
// as they happen, filtered by with_actor_id when given.
func (s *Server) Events(req *machine.EventsRequest, stream grpc.ServerStreamingServer[machine.Event]) error {
	hello, err := toMachineEvent(event{id: xid.New(), actor: req.GetWithActorId()})
	if err != nil {
		return err
	}

	if err := stream.Send(hello); err != nil {
		return err
	}

	i, err := s.Runtime.Events.start(req)
	if err != nil {
		return err
	}

	ctx := stream.Context()

	if s.shutdown != nil {
		var cancel context.CancelFunc

		ctx, cancel = context.WithCancel(ctx)
		defer cancel()

		stop := context.AfterFunc(s.shutdown, cancel)
		defer stop()
	}

	for {
		ev, ok, err := s.Runtime.Events.next(ctx, i)
		if !ok {
			if s.shutdown != nil && s.shutdown.Err() != nil {
				return status.Error(codes.Unavailable, "events: the node is going down")
			}

			return err
		}

		i++

		if req.GetWithActorId() != "" && ev.actor != req.GetWithActorId() {
			continue
		}

		msg, err := toMachineEvent(ev)
		if err != nil {
			return err
		}

		if err := stream.Send(msg); err != nil {
			return err
		}
	}
}

// Sequence publishes a sequence event of the node itself ("boot", ...).
func (r *Runtime) Sequence(name string, action machine.SequenceEvent_Action) {
	r.Events.Publish("", &machine.SequenceEvent{Sequence: name, Action: action})
}

// Phase publishes a phase event ("enter-initrd", "unlock-state", ...).
func (r *Runtime) Phase(name string, action machine.PhaseEvent_Action) {
	r.Events.Publish("", &machine.PhaseEvent{Phase: name, Action: action})
}

// Service publishes a service state change with its health.
func (r *Runtime) Service(id string, action machine.ServiceStateEvent_Action, message string, healthy bool) {
	r.Events.Publish("", &machine.ServiceStateEvent{
		Service: id, Action: action, Message: message,
		Health: &machine.ServiceHealth{Healthy: healthy, LastMessage: message},
	})
}
