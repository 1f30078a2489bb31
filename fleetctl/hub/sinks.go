package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	slevents "github.com/siderolabs/siderolink/pkg/events"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

// eventTypes are the Talos events the sink records (the ones Talos's
// event sink controller sends); others are accepted and dropped.
func eventTypes() []proto.Message {
	return []proto.Message{
		&machineapi.SequenceEvent{},
		&machineapi.PhaseEvent{},
		&machineapi.TaskEvent{},
		&machineapi.ServiceStateEvent{},
		&machineapi.RestartEvent{},
		&machineapi.ConfigLoadErrorEvent{},
		&machineapi.ConfigValidationErrorEvent{},
		&machineapi.AddressEvent{},
		&machineapi.MachineStatusEvent{},
	}
}

// ReportKey is the key of a log message in which a node reports what it
// is: {"labfleet-report": {"imageVersion": "...", "secureBoot": "enabled",
// "diskEncryption": "tpm"}}. labos sends one at boot through the log
// receiver; the hub records it in the registry instead of the log.
const ReportKey = "labfleet-report"

// recorder batches what nodes send (events, log lines) and writes it to the
// registry a few times a second in one transaction: a node's boot log is
// thousands of lines, and one transaction per line would not keep up.
type recorder struct {
	h *Hub

	mu     sync.Mutex
	events []registry.Event
	logs   []registry.LogLine
	warned map[netip.Addr]bool // unknown sources already logged once
}

func (r *recorder) machineAt(ctx context.Context, addr netip.Addr, what string) (registry.Machine, bool) {
	m, err := r.h.reg.MachineByAddress(ctx, addr)
	if err == nil {
		return m, true
	}

	r.mu.Lock()
	first := !r.warned[addr]
	r.warned[addr] = true
	r.mu.Unlock()

	if first {
		r.h.log.Warn(what+" dropped", "machine", "unknown", "source", addr, "reason", err.Error())
	}

	return registry.Machine{}, false
}

// HandleEvent implements SideroLink's events.Adapter.
func (r *recorder) HandleEvent(ctx context.Context, e slevents.Event) error {
	ap, err := netip.ParseAddrPort(e.Node)
	if err != nil {
		return fmt.Errorf("event from %q: not an address", e.Node)
	}

	m, ok := r.machineAt(ctx, ap.Addr(), "event")
	if !ok {
		return nil
	}

	payload, err := protojson.Marshal(e.Payload)
	if err != nil {
		payload = []byte(`{}`)
	}

	r.mu.Lock()
	r.events = append(r.events, registry.Event{
		UUID:    m.UUID,
		At:      time.Now(),
		Type:    strings.TrimPrefix(e.TypeURL, "type.googleapis.com/"),
		EventID: e.ID,
		Payload: string(payload),
	})
	r.mu.Unlock()

	return nil
}

// handleLog is SideroLink's logreceiver.Handler.
func (r *recorder) handleLog(src netip.Addr, msg map[string]any) {
	m, ok := r.machineAt(context.Background(), src.Unmap(), "log line")
	if !ok {
		return
	}

	if rep, ok := msg[ReportKey].(map[string]any); ok {
		str := func(k string) string { s, _ := rep[k].(string); return s }

		if err := r.h.reg.SetReport(context.Background(), m.UUID, registry.Report{
			ImageVersion:   str("imageVersion"),
			SecureBoot:     str("secureBoot"),
			DiskEncryption: str("diskEncryption"),
		}); err != nil {
			r.h.log.Error("recording a machine report", "machine", m.UUID, "err", err)
		}

		return
	}

	line, err := json.Marshal(msg)
	if err != nil {
		return
	}

	r.mu.Lock()
	r.logs = append(r.logs, registry.LogLine{UUID: m.UUID, At: time.Now(), Line: string(line)})
	r.mu.Unlock()
}

// flush writes what was received since the last flush.
func (r *recorder) flush(ctx context.Context) {
	r.mu.Lock()
	evs, logs := r.events, r.logs
	r.events, r.logs = nil, nil
	r.mu.Unlock()

	if err := r.h.reg.AddEvents(ctx, evs); err != nil {
		r.h.log.Error("storing events", "count", len(evs), "err", err)
	}

	if err := r.h.reg.AddLogs(ctx, logs); err != nil {
		r.h.log.Error("storing log lines", "count", len(logs), "err", err)
	}
}

func (r *recorder) run(ctx context.Context) {
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()

	for {
		select {
		case <-ctx.Done():
			r.flush(context.Background())

			return
		case <-t.C:
			r.flush(ctx)
		}
	}
}

// listenTunnel listens on the hub's tunnel address only, so the event sink
// and log receiver are reachable through WireGuard and from nowhere else.
func (h *Hub) listenTunnel(ctx context.Context, port int) (net.Listener, error) {
	addr := net.JoinHostPort(h.serverAddr.String(), fmt.Sprint(port))

	var (
		l   net.Listener
		err error
	)

	// The address was just put on the TUN device; give the kernel a moment
	// if it still is tentative.
	for range 50 {
		l, err = (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		if err == nil {
			return l, nil
		}

		time.Sleep(100 * time.Millisecond)
	}

	return nil, fmt.Errorf("listening on %s: %w", addr, err)
}
