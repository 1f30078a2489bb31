package overview

import (
	"net/url"
	"sort"
	"strings"
	"time"
)

// Filter selects nodes; every set field must match (empty matches all).
type Filter struct {
	Region     string `json:"region,omitempty"`     // exact
	Site       string `json:"site,omitempty"`       // exact
	Version    string `json:"version,omitempty"`    // exact; "unknown" selects nodes whose version nobody knows
	Health     string `json:"health,omitempty"`     // healthy, failed, upgrading, unknown
	Window     string `json:"window,omitempty"`     // "open" or "closed": the node's site window now
	SecureBoot string `json:"secureBoot,omitempty"` // on, off, unknown
	Encryption string `json:"encryption,omitempty"` // on, off, unknown
	Query      string `json:"q,omitempty"`          // substring of cluster, node, site or endpoint (case-insensitive)
}

// filterFrom reads a Filter from URL query parameters (names as in the docs).
func filterFrom(q url.Values) Filter {
	return Filter{
		Region: q.Get("region"), Site: q.Get("site"), Version: q.Get("version"), Health: q.Get("health"),
		Window: q.Get("window"), SecureBoot: q.Get("secureBoot"), Encryption: q.Get("encryption"),
		Query: strings.ToLower(strings.TrimSpace(q.Get("q"))),
	}
}

// view is one node as the API shows it: the store's records merged with the
// node's own facts. It carries no credentials (the talosconfig path stays out).
type view struct {
	Cluster    string    `json:"cluster"`
	Name       string    `json:"name"`
	Role       string    `json:"role"`
	Endpoint   string    `json:"endpoint"`
	Site       string    `json:"site"`
	Region     string    `json:"region"`
	Version    string    `json:"version"`
	Health     string    `json:"health"`
	State      string    `json:"state,omitempty"`
	Target     string    `json:"target,omitempty"`
	Error      string    `json:"error,omitempty"`
	RolledBack bool      `json:"rolledBack,omitempty"`
	SecureBoot string    `json:"secureBoot"`
	Encryption string    `json:"encryption"`
	LastSeen   time.Time `json:"lastSeen,omitzero"`
	UpdatedAt  time.Time `json:"updatedAt,omitzero"`
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}

	return s
}

func (s *snapshot) view(i int, facts FactSource) (view, Facts) {
	n := &s.nodes[i]
	v := view{
		Cluster: n.Cluster, Name: n.Name, Role: n.Role, Endpoint: n.Endpoint, Site: n.Site, Region: n.Region,
		Version: n.version, Health: n.health, State: n.state, Target: n.target, Error: n.errText, RolledBack: n.rolledBack,
		UpdatedAt: n.updated,
	}

	var f Facts

	if facts != nil {
		if got, ok := facts.Facts(n.Cluster, n.Name); ok {
			f = got
			if f.Version != "" {
				v.Version = f.Version
			}

			v.SecureBoot, v.Encryption, v.LastSeen = f.SecureBoot, f.Encryption, f.LastSeen
		}
	}

	v.Version, v.SecureBoot, v.Encryption = orUnknown(v.Version), orUnknown(v.SecureBoot), orUnknown(v.Encryption)

	return v, f
}

func (f Filter) match(v view, windowOpen bool) bool {
	switch {
	case f.Region != "" && v.Region != f.Region,
		f.Site != "" && v.Site != f.Site,
		f.Version != "" && v.Version != f.Version,
		f.Health != "" && v.Health != f.Health,
		f.Window == "open" && !windowOpen,
		f.Window == "closed" && windowOpen,
		f.SecureBoot != "" && v.SecureBoot != f.SecureBoot,
		f.Encryption != "" && v.Encryption != f.Encryption:
		return false
	}

	if f.Query == "" {
		return true
	}

	for _, s := range []string{v.Cluster, v.Name, v.Site, v.Endpoint, v.Cluster + "/" + v.Name} {
		if strings.Contains(strings.ToLower(s), f.Query) {
			return true
		}
	}

	return false
}

// Counts are node counts of a group, in total and per health.
type Counts struct {
	Clusters int            `json:"clusters"`
	Nodes    int            `json:"nodes"`
	Health   map[string]int `json:"health"`
}

func (c *Counts) add(h string) {
	if c.Health == nil {
		c.Health = map[string]int{}
	}

	c.Nodes++
	c.Health[h]++
}

// SiteView is a site with its local time and window, and the roll-up of its matching nodes.
type SiteView struct {
	Name       string    `json:"name"`
	Region     string    `json:"region"`
	Country    string    `json:"country,omitempty"`
	TimeZone   string    `json:"timezone"`
	LocalTime  string    `json:"localTime"` // "2006-01-02 15:04 MST" in the site's zone
	WindowOpen bool      `json:"windowOpen"`
	Always     bool      `json:"alwaysOpen"` // no windows: may be touched at any time
	OpenUntil  time.Time `json:"openUntil,omitzero"`
	NextOpen   time.Time `json:"nextOpen,omitzero"` // when closed: the next opening
	Counts
}

// RegionView is a region with its sites.
type RegionView struct {
	Name string `json:"name"`
	Counts
	Sites []SiteView `json:"sites"`
}

// Fleet is GET /api/v1/fleet.
type Fleet struct {
	GeneratedAt time.Time    `json:"generatedAt"`
	Filter      Filter       `json:"filter"`
	Total       Counts       `json:"total"`
	Versions    []string     `json:"versions"` // every version in the fleet (for the filter)
	Regions     []RegionView `json:"regions"`
	// LatestRollout is the newest rollout's id ("" none).
	LatestRollout string `json:"latestRollout,omitempty"`
}

type siteNow struct {
	open bool
	view SiteView
}

func (s *snapshot) sitesNow(now time.Time) []siteNow {
	out := make([]siteNow, len(s.sites))

	for i, st := range s.sites {
		sv := SiteView{Name: st.Name, Region: st.Region, Country: st.Country, TimeZone: orUnknown(st.TimeZone)}

		if st.sched != nil {
			sv.LocalTime = now.In(st.sched.Location()).Format("2006-01-02 15:04 MST")
			sv.Always = st.sched.Always()
			open, until := st.sched.OpenUntil(now)
			sv.WindowOpen = open

			switch {
			case sv.Always:
			case open:
				sv.OpenUntil = until
			default:
				sv.NextOpen = st.sched.NextOpen(now)
			}
		} else {
			// No schedule known: a site nobody froze windows for is not
			// reported open (fleetctl would not know when it may touch it).
			sv.LocalTime = now.UTC().Format("2006-01-02 15:04 MST")
		}

		out[i] = siteNow{open: sv.WindowOpen, view: sv}
	}

	return out
}

func (s *snapshot) fleet(f Filter, facts FactSource, now time.Time) Fleet {
	sn := s.sitesNow(now)
	out := Fleet{GeneratedAt: now.UTC(), Filter: f, LatestRollout: s.latest}
	versions := map[string]bool{}
	regions := map[string]*RegionView{}

	for si := range s.sites {
		st := &s.sites[si]
		sv := sn[si].view

		for _, ci := range st.clusters {
			matched := false

			for _, ni := range s.clusters[ci].nodes {
				v, _ := s.view(ni, facts)
				versions[v.Version] = true

				if !f.match(v, sn[si].open) {
					continue
				}

				matched = true

				sv.Counts.add(v.Health)
			}

			if matched {
				sv.Clusters++
			}
		}

		if sv.Nodes == 0 {
			continue
		}

		rv := regions[st.Region]
		if rv == nil {
			rv = &RegionView{Name: st.Region}
			regions[st.Region] = rv
		}

		rv.Sites = append(rv.Sites, sv)
		rv.Clusters += sv.Clusters

		for h, n := range sv.Health {
			if rv.Health == nil {
				rv.Health = map[string]int{}
			}

			rv.Health[h] += n
			rv.Nodes += n
		}
	}

	out.Total.Health = map[string]int{}

	for _, name := range s.regions {
		rv := regions[name]
		if rv == nil {
			continue
		}

		sort.Slice(rv.Sites, func(i, j int) bool { return rv.Sites[i].Name < rv.Sites[j].Name })
		out.Regions = append(out.Regions, *rv)
		out.Total.Clusters += rv.Clusters
		out.Total.Nodes += rv.Nodes

		for h, n := range rv.Health {
			out.Total.Health[h] += n
		}
	}

	for v := range versions {
		out.Versions = append(out.Versions, v)
	}

	sort.Strings(out.Versions)

	if out.Regions == nil {
		out.Regions = []RegionView{}
	}

	return out
}

// ClusterView is a cluster with its matching nodes.
type ClusterView struct {
	Name   string            `json:"name"`
	Site   string            `json:"site"`
	Region string            `json:"region"`
	Labels map[string]string `json:"labels,omitempty"`
	Health string            `json:"health"` // worst of its nodes: failed > upgrading > unknown > healthy
	Nodes  []view            `json:"nodes"`
}

// Clusters is GET /api/v1/clusters.
type Clusters struct {
	Total    int           `json:"total"` // matching clusters
	Offset   int           `json:"offset"`
	Clusters []ClusterView `json:"clusters"`
}

var healthRank = map[string]int{HealthHealthy: 0, HealthUnknown: 1, HealthUpgrading: 2, HealthFailed: 3}

func (s *snapshot) clusterList(f Filter, facts FactSource, now time.Time, offset, limit int) Clusters {
	sn := s.sitesNow(now)
	out := Clusters{Offset: offset, Clusters: []ClusterView{}}

	for ci := range s.clusters {
		c := &s.clusters[ci]
		if f.Site != "" && c.Site != f.Site {
			continue
		}

		open := sn[s.bySite[c.Site]].open
		cv := ClusterView{Name: c.Name, Site: c.Site, Region: c.Region, Labels: c.Labels, Health: HealthHealthy}

		for _, ni := range c.nodes {
			v, _ := s.view(ni, facts)
			if healthRank[v.Health] > healthRank[cv.Health] {
				cv.Health = v.Health
			}

			if f.match(v, open) {
				cv.Nodes = append(cv.Nodes, v)
			}
		}

		if len(cv.Nodes) == 0 {
			continue
		}

		out.Total++

		if out.Total > offset && len(out.Clusters) < limit {
			out.Clusters = append(out.Clusters, cv)
		}
	}

	return out
}
