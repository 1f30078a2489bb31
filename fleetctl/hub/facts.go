package hub

import (
	"context"
	"sync"
	"time"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/overview"
)

// Facts answers the overview's per-node questions (overview.FactSource)
// from the machine registry: what the nodes reported through their links.
// The overview asks once per node for every page of 30,000 nodes, so the
// machines are read in one query at most every TTL and kept in memory; a
// machine's events and kernel log are read when its own node is asked for
// and kept for the same TTL.
type Facts struct {
	Registry *registry.Registry
	// TTL is how old the in-memory copy may be (default 5 s).
	TTL time.Duration

	mu       sync.Mutex
	loadedAt time.Time
	byNode   map[[2]string]registry.Machine
	recent   map[string]recentFacts
}

type recentFacts struct {
	at             time.Time
	events, kernel []string
}

// recentLines is how many events and log lines a node page shows.
const recentLines = 50

// Facts implements overview.FactSource. A machine answers for the
// inventory node named by its UUID or by its tunnel address in the cluster
// it was accepted into (or listed in by UUID).
func (f *Facts) Facts(cluster, node string) (overview.Facts, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()

	ttl := f.TTL
	if ttl <= 0 {
		ttl = 5 * time.Second
	}

	if time.Since(f.loadedAt) > ttl {
		f.reload()
	}

	m, ok := f.byNode[[2]string{cluster, node}]
	if !ok {
		return overview.Facts{}, false
	}

	out := overview.Facts{
		Version: m.ImageVersion, SecureBoot: onOff(m.SecureBoot), Encryption: onOff(m.DiskEncryption), LastSeen: m.LastSeen,
	}
	if out.Version == "" {
		out.Version = m.TalosVersion
	}

	r, ok := f.recent[m.UUID]
	if !ok || time.Since(r.at) > ttl {
		r = f.loadRecent(m.UUID)
		f.recent[m.UUID] = r
	}

	out.Events, out.KernelLog = r.events, r.kernel

	return out, true
}

// reload reads every machine; on a read error the previous copy stays (the
// overview shows what it knew rather than nothing) and is retried next time.
func (f *Facts) reload() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	f.loadedAt = time.Now()

	ms, err := f.Registry.Machines(ctx)
	if err != nil {
		return
	}

	byNode := make(map[[2]string]registry.Machine, 2*len(ms))

	for _, m := range ms {
		if m.Cluster == "" {
			continue
		}

		byNode[[2]string{m.Cluster, m.UUID}] = m
		if m.TunnelAddress != "" {
			byNode[[2]string{m.Cluster, m.TunnelAddress}] = m
		}
	}

	f.byNode = byNode
	f.recent = map[string]recentFacts{}
}

func (f *Facts) loadRecent(uuid string) recentFacts {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	r := recentFacts{at: time.Now()}

	if evs, err := f.Registry.Events(ctx, uuid, recentLines); err == nil {
		for _, e := range evs {
			r.events = append(r.events, e.At.UTC().Format(time.RFC3339)+" "+e.Type+" "+e.Payload)
		}
	}

	if lines, err := f.Registry.Logs(ctx, uuid, 0, recentLines); err == nil {
		for _, l := range lines {
			r.kernel = append(r.kernel, l.Line)
		}
	}

	return r
}

// onOff maps the registry's reported states to the overview's "on"/"off"/"".
func onOff(s string) string {
	switch s {
	case "on", "enabled", "true", "encrypted", "tpm", "luks2":
		return "on"
	case "off", "disabled", "false", "unencrypted":
		return "off"
	default:
		return ""
	}
}
