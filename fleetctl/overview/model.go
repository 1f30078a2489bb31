package overview

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// Health of a node as far as the rollout store knows it.
const (
	HealthHealthy   = "healthy"   // passed its last health gate
	HealthFailed    = "failed"    // failed its last health gate
	HealthUpgrading = "upgrading" // in flight in the current rollout
	HealthUnknown   = "unknown"   // no gate result recorded (the hub will report it)
)

// Facts is what only the nodes themselves know: the hub fills it from the
// nodes' own reports (SideroLink). The store does not have it.
type Facts struct {
	Version    string    // running Talos/image version ("" unknown)
	SecureBoot string    // "on", "off" or "" (unknown)
	Encryption string    // "on", "off" or "" (unknown)
	LastSeen   time.Time // zero: never reported
	Events     []string  // recent events, newest last
	KernelLog  []string  // recent kernel log lines, newest last
}

// FactSource answers Facts per node; nil means nothing is known beyond the store.
type FactSource interface {
	Facts(cluster, node string) (Facts, bool)
}

// nodeRec is one node of the fleet with what the rollout records say about it.
type nodeRec struct {
	Cluster, Name, Role, Endpoint, Site, Region string

	version    string // last version the records establish ("" unknown)
	state      string // state in the newest rollout that has the node
	health     string
	target     string
	errText    string
	rolledBack bool
	updated    time.Time

	rollout string // newest rollout id with this node
	idx     int    // its node id in that rollout
}

type clusterRec struct {
	Name, Site, Region string
	Labels             map[string]string
	nodes              []int // indexes into snapshot.nodes
}

type siteRec struct {
	Name, Region, Country, TimeZone string
	sched                           *window.Schedule
	clusters                        []int
}

// snapshot is the fleet as read from the store (and the inventory, if given).
type snapshot struct {
	rollouts []store.Rollout // oldest first
	nodes    []nodeRec
	byKey    map[string]int // cluster/node
	clusters []clusterRec
	byClust  map[string]int
	sites    []siteRec
	bySite   map[string]int
	regions  []string

	latest    string      // newest rollout id
	watermark int64       // newest updated_at (ns) of the latest rollout's nodes applied
	byLatest  map[int]int // node id in the latest rollout -> index in nodes
	built     time.Time
}

// model keeps the snapshot fresh: a full build when the set of rollouts
// changes, otherwise only the latest rollout's changed node rows are applied.
type model struct {
	st  *store.Store
	inv *inventory.Inventory

	mu   sync.Mutex
	snap *snapshot
}

func newModel(st *store.Store, inv *inventory.Inventory) *model { return &model{st: st, inv: inv} }

// get returns a snapshot at most one refresh old.
func (m *model) get(ctx context.Context) (*snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()

	var latest string

	err := m.st.DB().QueryRowContext(ctx, `SELECT COALESCE((SELECT id FROM rollouts ORDER BY created_at DESC LIMIT 1), '')`).Scan(&latest)
	if err != nil {
		return nil, fmt.Errorf("reading latest rollout: %w", err)
	}

	if m.snap == nil || m.snap.latest != latest {
		s, err := build(ctx, m.st, m.inv)
		if err != nil {
			return nil, err
		}

		m.snap = s

		return s, nil
	}

	// Refreshing copies the node table; a page reload or ten within half a
	// second share one copy.
	if time.Since(m.snap.built) < 500*time.Millisecond {
		return m.snap, nil
	}

	// Copy-on-write: handlers may still read the previous snapshot.
	s := *m.snap
	s.built = time.Now()
	s.nodes = append([]nodeRec(nil), m.snap.nodes...)

	if err := s.refresh(ctx, m.st); err != nil {
		return nil, err
	}

	m.snap = &s

	return &s, nil
}

func key(cluster, node string) string { return cluster + "/" + node }

func build(ctx context.Context, st *store.Store, inv *inventory.Inventory) (*snapshot, error) {
	all, err := st.Rollouts(ctx)
	if err != nil {
		return nil, err
	}

	s := &snapshot{byKey: map[string]int{}, byClust: map[string]int{}, bySite: map[string]int{}, byLatest: map[int]int{}, built: time.Now()}

	for i := len(all) - 1; i >= 0; i-- {
		s.rollouts = append(s.rollouts, all[i])
	}

	if inv != nil {
		for _, st := range inv.Sites {
			sch, err := window.NewSchedule(st.TimeZone, st.Windows)
			if err != nil {
				return nil, fmt.Errorf("inventory site %s: %w", st.Name, err)
			}

			s.addSite(siteRec{Name: st.Name, Region: st.Region, Country: st.Country, TimeZone: st.TimeZone, sched: sch})
		}

		for _, c := range inv.Clusters {
			site, _ := inv.Site(c.Site)
			ci := s.addCluster(c.Name, c.Site, site.Region)
			s.clusters[ci].Labels = c.Labels

			for _, n := range c.Nodes {
				s.addNode(nodeRec{Cluster: c.Name, Name: n.Name, Role: n.Role, Endpoint: n.Address(), Site: c.Site, Region: site.Region})
			}
		}
	}

	// Oldest first: what a newer rollout recorded wins.
	for ri, r := range s.rollouts {
		sch, err := schedules(ctx, st, r.ID)
		if err != nil {
			return nil, err
		}

		for name, sc := range sch {
			si, ok := s.bySite[name]
			if !ok {
				s.addSite(siteRec{Name: name, TimeZone: sc.Location().String(), sched: sc})

				continue
			}

			if inv == nil {
				s.sites[si].sched, s.sites[si].TimeZone = sc, sc.Location().String()
			}
		}

		nodes, err := st.Nodes(ctx, r.ID)
		if err != nil {
			return nil, err
		}

		newest := ri == len(s.rollouts)-1

		for _, n := range nodes {
			i, ok := s.byKey[key(n.Cluster, n.Name)]
			if !ok {
				s.addCluster(n.Cluster, n.Site, n.Region)
				i = s.addNode(nodeRec{Cluster: n.Cluster, Name: n.Name, Role: n.Role, Endpoint: n.Endpoint, Site: n.Site, Region: n.Region})
			}

			if si, ok := s.bySite[n.Site]; ok && s.sites[si].Region == "" {
				s.sites[si].Region = n.Region
			}

			s.nodes[i].apply(r, n)

			if newest {
				s.byLatest[n.ID] = i
				s.watermark = max(s.watermark, n.UpdatedAt.UnixNano())
			}
		}

		if newest {
			s.latest = r.ID
		}
	}

	for _, si := range s.sites {
		if !contains(s.regions, si.Region) {
			s.regions = append(s.regions, si.Region)
		}
	}

	sort.Strings(s.regions)

	return s, nil
}

func contains(l []string, v string) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}

	return false
}

func (s *snapshot) addSite(r siteRec) int {
	if i, ok := s.bySite[r.Name]; ok {
		return i
	}

	s.sites = append(s.sites, r)
	s.bySite[r.Name] = len(s.sites) - 1

	return len(s.sites) - 1
}

func (s *snapshot) addCluster(name, site, region string) int {
	if i, ok := s.byClust[name]; ok {
		return i
	}

	si, ok := s.bySite[site]
	if !ok {
		si = s.addSite(siteRec{Name: site, Region: region})
	}

	s.clusters = append(s.clusters, clusterRec{Name: name, Site: site, Region: region})
	ci := len(s.clusters) - 1
	s.byClust[name] = ci
	s.sites[si].clusters = append(s.sites[si].clusters, ci)

	return ci
}

func (s *snapshot) addNode(n nodeRec) int {
	if i, ok := s.byKey[key(n.Cluster, n.Name)]; ok {
		return i
	}

	n.health = HealthUnknown
	s.nodes = append(s.nodes, n)
	i := len(s.nodes) - 1
	s.byKey[key(n.Cluster, n.Name)] = i

	ci := s.byClust[n.Cluster]
	s.clusters[ci].nodes = append(s.clusters[ci].nodes, i)

	return i
}

// apply folds one rollout record of the node into what is known about it.
// The version rule: done means the rollout's target runs; a node rolled
// back, or failed before it ran the target, runs its recorded previous
// version; a node in flight or failed otherwise runs an unknown version
// until the node itself reports (Facts).
func (n *nodeRec) apply(r store.Rollout, rec store.Node) {
	n.rollout, n.idx = r.ID, rec.ID
	n.state, n.target, n.errText, n.rolledBack, n.updated = rec.State, r.Version, rec.Error, rec.RolledBack, rec.UpdatedAt

	switch rec.State {
	case store.NodeDone:
		n.version, n.health = r.Version, HealthHealthy
	case store.NodeFailed:
		n.health = HealthFailed
		if rec.RolledBack || strings.Contains(rec.Error, "fell back") {
			n.version = rec.FromVersion
		} else {
			n.version = ""
		}
	case store.NodeRequested, store.NodeAccepted, store.NodeRollingBack:
		n.health = HealthUpgrading
		if rec.FromVersion != "" {
			n.version = rec.FromVersion
		}
	case store.NodeSkipped:
		if rec.FromVersion != "" {
			n.version = rec.FromVersion
		}
	}
}

// refresh applies the latest rollout's node rows changed since the watermark.
func (s *snapshot) refresh(ctx context.Context, st *store.Store) error {
	if s.latest == "" {
		return nil
	}

	var r *store.Rollout

	for i := range s.rollouts {
		if s.rollouts[i].ID == s.latest {
			r = &s.rollouts[i]
		}
	}

	// >= : rows committed in the same nanosecond as the watermark are applied again (idempotent).
	rows, err := st.DB().QueryContext(ctx, `SELECT id, state, from_version, error, rolled_back, updated_at FROM nodes
		WHERE rollout_id = ? AND updated_at >= ?`, s.latest, s.watermark)
	if err != nil {
		return fmt.Errorf("reading changed nodes: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	for rows.Next() {
		var (
			rec store.Node
			rb  int
			up  int64
		)

		if err := rows.Scan(&rec.ID, &rec.State, &rec.FromVersion, &rec.Error, &rb, &up); err != nil {
			return fmt.Errorf("reading changed node: %w", err)
		}

		rec.RolledBack, rec.UpdatedAt = rb != 0, time.Unix(0, up).UTC()
		s.watermark = max(s.watermark, up)

		if i, ok := s.byLatest[rec.ID]; ok {
			s.nodes[i].apply(*r, rec)
		}
	}

	return rows.Err()
}
