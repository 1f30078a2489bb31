// Package inventory reads the fleet inventory: sites (where and when nodes may
// be touched), clusters (which credentials reach them) and nodes (endpoint and
// role). An inventory is one YAML file or a directory of them; entries from
// all files are merged and every entry remembers the file it came from so
// errors can point at it.
package inventory

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/window"
)

// Roles a node may have.
const (
	RoleControlPlane = "controlplane"
	RoleWorker       = "worker"
)

// Bandwidth classes of a site's uplink.
const (
	BandwidthLow    = "low"
	BandwidthMedium = "medium"
	BandwidthHigh   = "high"
)

// File is the YAML document shape of one inventory file.
type File struct {
	// Sites are physical locations sharing a time zone, windows and an uplink.
	Sites []Site `yaml:"sites,omitempty" json:"sites,omitempty"`
	// Clusters are Talos clusters; each lives in one site.
	Clusters []Cluster `yaml:"clusters,omitempty" json:"clusters,omitempty"`
}

// Site is a location with its own maintenance windows.
type Site struct {
	// Name identifies the site (unique across the inventory).
	Name string `yaml:"name" json:"name"`
	// Region groups sites that share network capacity; plans cap concurrency per region.
	Region string `yaml:"region" json:"region"`
	// Country is the ISO 3166-1 alpha-2 code (e.g. DE); plans may select by it.
	Country string `yaml:"country,omitempty" json:"country,omitempty"`
	// TimeZone is the IANA zone the windows are written in (e.g. Europe/Berlin).
	TimeZone string `yaml:"timezone" json:"timezone"`
	// Windows are the maintenance windows in local time; empty means any time.
	Windows []window.Window `yaml:"windows,omitempty" json:"windows,omitempty"`
	// Bandwidth is the uplink class: low, medium or high (default medium).
	Bandwidth string `yaml:"bandwidth,omitempty" json:"bandwidth,omitempty"`

	// Source is the file the entry was read from.
	Source string `yaml:"-" json:"source,omitempty"`
}

// Cluster is a set of nodes reached with one set of credentials.
type Cluster struct {
	// Name identifies the cluster (unique across the inventory).
	Name string `yaml:"name" json:"name"`
	// Site names the site the cluster is in.
	Site string `yaml:"site" json:"site"`
	// Talosconfig is the path to the client configuration (mTLS credentials) for
	// this cluster's machine API; relative paths are relative to the inventory file.
	Talosconfig string `yaml:"talosconfig,omitempty" json:"talosconfig,omitempty"`
	// Labels are free-form key/values plans can select on.
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	// Nodes are the machines of the cluster.
	Nodes []Node `yaml:"nodes" json:"nodes"`

	// Source is the file the entry was read from.
	Source string `yaml:"-" json:"source,omitempty"`
}

// Node is one machine.
type Node struct {
	// Name identifies the node within its cluster.
	Name string `yaml:"name" json:"name"`
	// Endpoint is host:port of the node's machine API (port defaults to 50000).
	// Give either endpoint or machine.
	Endpoint string `yaml:"endpoint,omitempty" json:"endpoint,omitempty"`
	// Machine is the SMBIOS UUID of a node enrolled at the fleet hub (fleetctl
	// machines ls): fleetctl reaches it at its SideroLink tunnel address,
	// through the hub, so the site needs no inbound port. Give either
	// endpoint or machine.
	Machine string `yaml:"machine,omitempty" json:"machine,omitempty"`
	// Role is controlplane or worker; control plane nodes are upgraded one at a time.
	Role string `yaml:"role" json:"role"`
}

// MachinePrefix marks an address that names a hub-enrolled machine by UUID
// instead of a network endpoint (see Node.Address).
const MachinePrefix = "machine:"

// Address is where the driver reaches the node: its endpoint, or
// "machine:UUID" for a node named by machine UUID, which the driver
// resolves to the machine's tunnel address when it connects (the address
// is the hub's to assign, so it is not copied into rollout records).
func (n Node) Address() string {
	if n.Machine != "" {
		return MachinePrefix + strings.ToLower(n.Machine)
	}

	return n.Endpoint
}

// Inventory is the merged content of one or more files.
type Inventory struct {
	Sites    []Site
	Clusters []Cluster

	siteIndex map[string]int
}

// Site returns the named site.
func (inv *Inventory) Site(name string) (Site, bool) {
	if inv.siteIndex == nil {
		inv.index()
	}

	i, ok := inv.siteIndex[name]
	if !ok {
		return Site{}, false
	}

	return inv.Sites[i], true
}

func (inv *Inventory) index() {
	inv.siteIndex = make(map[string]int, len(inv.Sites))
	for i, s := range inv.Sites {
		inv.siteIndex[s.Name] = i
	}
}

// NodeCount is the number of nodes over all clusters.
func (inv *Inventory) NodeCount() int {
	n := 0
	for _, c := range inv.Clusters {
		n += len(c.Nodes)
	}

	return n
}

// Load reads an inventory file or every *.yaml / *.yml file in a directory
// (sorted by name) and merges them. It does not validate: call Validate.
func Load(path string) (*Inventory, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading inventory: %w", err)
	}

	files := []string{path}

	if st.IsDir() {
		files = nil

		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("reading inventory directory: %w", err)
		}

		for _, e := range entries {
			ext := filepath.Ext(e.Name())
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}

		sort.Strings(files)

		if len(files) == 0 {
			return nil, fmt.Errorf("inventory directory %s holds no .yaml files", path)
		}
	}

	inv := &Inventory{}

	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading inventory: %w", err)
		}

		if err := inv.add(f, data); err != nil {
			return nil, err
		}
	}

	inv.index()

	return inv, nil
}

// Parse reads one inventory document; name is used in error messages and to
// resolve relative talosconfig paths.
func Parse(name string, data []byte) (*Inventory, error) {
	inv := &Inventory{}
	if err := inv.add(name, data); err != nil {
		return nil, err
	}

	inv.index()

	return inv, nil
}

func (inv *Inventory) add(name string, data []byte) error {
	// Talosconfig paths are stored absolute: a rollout resumed from
	// another directory must find the same credentials. The file's
	// directory is made absolute once: filepath.Abs per cluster asked
	// the kernel for the working directory each time (two system
	// calls per cluster, 100,000 clusters at the bench's largest).
	dir := filepath.Dir(name)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}

	if f, ok := fastDecode(data); ok {
		inv.addFile(name, dir, &f)

		return nil
	}

	return decodeYAML(name, data, func(f *File) { inv.addFile(name, dir, f) })
}

// decodeYAML decodes every document of data with yaml.v3, refusing unknown
// fields, and hands each to add. Its errors are the ones users see for any
// file fastDecode does not take.
func decodeYAML(name string, data []byte, add func(*File)) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	for {
		var f File

		err := dec.Decode(&f)
		if errors.Is(err, io.EOF) {
			return nil
		}

		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}

		add(&f)
	}
}

// addFile appends the entries of one decoded document (or of all
// documents of a file: the fast path gathers them in one File). It takes
// f's slices over when the inventory is still empty.
func (inv *Inventory) addFile(name, dir string, f *File) {
	for i := range f.Sites {
		f.Sites[i].Source = name
	}

	for i := range f.Clusters {
		c := &f.Clusters[i]
		c.Source = name

		switch {
		case c.Talosconfig == "":
		case filepath.IsAbs(c.Talosconfig):
			c.Talosconfig = filepath.Clean(c.Talosconfig) // as filepath.Abs did
		default:
			c.Talosconfig = filepath.Join(dir, c.Talosconfig)
		}
	}

	if inv.Sites == nil {
		inv.Sites = f.Sites
	} else {
		inv.Sites = append(inv.Sites, f.Sites...)
	}

	if inv.Clusters == nil {
		inv.Clusters = f.Clusters
	} else {
		inv.Clusters = append(inv.Clusters, f.Clusters...)
	}
}

// FieldError names where an inventory or plan entry is wrong.
type FieldError struct {
	File  string // file the entry came from
	Entry string // e.g. `site "ber-1"` or `cluster "a" node "cp1"`
	Field string // YAML field name
	Msg   string // what is wrong and what is allowed
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: %s: %s: %s", e.File, e.Entry, e.Field, e.Msg)
}

// Errors is every problem found by Validate.
type Errors []*FieldError

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}

	return strings.Join(parts, "\n")
}

// DefaultPort is the machine API port an endpoint without one uses.
const DefaultPort = "50000"

// NormalizeEndpoint writes an endpoint as host:port with the default port,
// so "10.0.0.10" and "10.0.0.10:50000" compare equal.
func NormalizeEndpoint(ep string) string {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(ep, "["), "]"), DefaultPort
	} else if ep[0] != '[' {
		// Already host:port (SplitHostPort refuses a colon in an
		// unbracketed host), so joining would only copy it; ToLower
		// does not copy a string without upper-case letters.
		return strings.ToLower(ep)
	}

	return strings.ToLower(net.JoinHostPort(host, port))
}

// Validate checks every entry and returns all problems found (as Errors).
//
// It runs over every entry of inventories of 100,000 clusters, so it
// writes an entry's name only when the entry has a problem, and checks a
// site's zone and windows once per distinct zone and windows.
func (inv *Inventory) Validate() error {
	var errs Errors

	add := func(file, entry, field, format string, args ...any) {
		errs = append(errs, &FieldError{File: file, Entry: entry, Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	sites := make(map[string]string, len(inv.Sites))

	// time.LoadLocation reads and parses the zone file on every call.
	schedules := map[string]error{}

	for i, s := range inv.Sites {
		entry := func() string { return fmt.Sprintf("sites[%d] %q", i, s.Name) }
		if s.Name == "" {
			add(s.Source, entry(), "name", "required")
		} else if prev, dup := sites[s.Name]; dup {
			add(s.Source, entry(), "name", "duplicate site name (first defined in %s)", prev)
		} else {
			sites[s.Name] = s.Source
		}

		if s.Region == "" {
			add(s.Source, entry(), "region", "required (the region groups sites for concurrency caps)")
		}

		if s.Country != "" && (len(s.Country) != 2 || strings.ToUpper(s.Country) != s.Country) {
			add(s.Source, entry(), "country", "%q is not an ISO 3166-1 alpha-2 code (e.g. DE)", s.Country)
		}

		switch s.Bandwidth {
		case "", BandwidthLow, BandwidthMedium, BandwidthHigh:
		default:
			add(s.Source, entry(), "bandwidth", "%q is not a bandwidth class (want low, medium or high)", s.Bandwidth)
		}

		if s.TimeZone == "" {
			add(s.Source, entry(), "timezone", "required (an IANA zone such as Europe/Berlin or UTC)")
		} else if err := checkSchedule(schedules, s.TimeZone, s.Windows); err != nil {
			field, msg, _ := strings.Cut(err.Error(), ": ")
			add(s.Source, entry(), field, "%s", msg)
		}
	}

	clusters := make(map[string]string, len(inv.Clusters))

	// Across the whole inventory: two entries for one machine would upgrade
	// it twice and break every per-cluster guarantee. The map holds where
	// the first node with an address is (8 bytes instead of its strings).
	type seenEndpoint struct{ cluster, node int32 }

	endpoints := make(map[string]seenEndpoint, inv.NodeCount())
	first := func(at seenEndpoint) (cluster string, n Node) {
		c := &inv.Clusters[at.cluster]

		return c.Name, c.Nodes[at.node]
	}

	for i, c := range inv.Clusters {
		entry := func() string { return fmt.Sprintf("clusters[%d] %q", i, c.Name) }
		if c.Name == "" {
			add(c.Source, entry(), "name", "required")
		} else if prev, dup := clusters[c.Name]; dup {
			add(c.Source, entry(), "name", "duplicate cluster name (first defined in %s)", prev)
		} else {
			clusters[c.Name] = c.Source
		}

		if c.Site == "" {
			add(c.Source, entry(), "site", "required (name of a site in the inventory)")
		} else if _, ok := sites[c.Site]; !ok {
			add(c.Source, entry(), "site", "unknown site %q (define it under sites:)", c.Site)
		}

		if len(c.Nodes) == 0 {
			add(c.Source, entry(), "nodes", "a cluster needs at least one node")
		}

		if c.Talosconfig != "" {
			if _, err := os.Stat(c.Talosconfig); err != nil {
				add(c.Source, entry(), "talosconfig", "%s: no such file (fleetctl site init writes one)", c.Talosconfig)
			}
		}

		for j, n := range c.Nodes {
			nentry := func() string { return fmt.Sprintf("%s nodes[%d] %q", entry(), j, n.Name) }
			if n.Name == "" {
				add(c.Source, nentry(), "name", "required")
			} else if nodeNamed(c.Nodes[:j], n.Name) {
				add(c.Source, nentry(), "name", "duplicate node name in cluster")
			}

			switch {
			case n.Endpoint == "" && n.Machine == "":
				add(c.Source, nentry(), "endpoint", "required (host or host:port of the machine API, or machine: UUID for a node enrolled at the hub)")
			case n.Endpoint != "" && n.Machine != "":
				add(c.Source, nentry(), "machine", "give either endpoint or machine, not both (machine: the node is reached through the hub)")
			case n.Machine != "":
				if err := uuid.Validate(n.Machine); err != nil || len(n.Machine) != 36 {
					add(c.Source, nentry(), "machine", "%q is not a machine UUID (8-4-4-4-12 hex digits, as fleetctl machines ls shows)", n.Machine)
				} else if at, dup := endpoints[n.Address()]; dup {
					cluster, prev := first(at)
					add(c.Source, nentry(), "machine", "%q is also node %s of cluster %s", n.Machine, prev.Name, cluster)
				} else {
					endpoints[n.Address()] = seenEndpoint{cluster: int32(i), node: int32(j)}
				}
			default:
				key := NormalizeEndpoint(n.Endpoint)
				if at, dup := endpoints[key]; dup {
					// The first one was given as an endpoint, or as a
					// machine whose address reads like this endpoint.
					cluster, prev := first(at)
					as := prev.Endpoint
					if prev.Machine != "" {
						as = prev.Machine
					}

					add(c.Source, nentry(), "endpoint", "%q is also node %s of cluster %s (%q; the port defaults to %s)",
						n.Endpoint, prev.Name, cluster, as, DefaultPort)
				} else {
					endpoints[key] = seenEndpoint{cluster: int32(i), node: int32(j)}
				}
			}

			if n.Role != RoleControlPlane && n.Role != RoleWorker {
				add(c.Source, nentry(), "role", "%q is not a role (want controlplane or worker)", n.Role)
			}
		}
	}

	if len(errs) > 0 {
		return errs
	}

	return nil
}

// nodeNamed reports whether one of nodes is called name. Clusters have a
// handful of nodes: a scan costs less than a map per cluster.
func nodeNamed(nodes []Node, name string) bool {
	for _, n := range nodes {
		if n.Name == name {
			return true
		}
	}

	return false
}

// checkSchedule is window.NewSchedule's verdict on a zone and windows,
// remembered in seen: sites repeat a few zones and windows many times.
func checkSchedule(seen map[string]error, zone string, windows []window.Window) error {
	key := zone
	if len(windows) > 0 {
		// Quoted strings delimit themselves, so no two different
		// zones and windows give one key.
		b := []byte(strconv.Quote(zone))

		for _, w := range windows {
			b = strconv.AppendInt(append(b, '['), int64(len(w.Days)), 10)
			for _, d := range w.Days {
				b = strconv.AppendQuote(b, d)
			}

			b = strconv.AppendQuote(strconv.AppendQuote(b, w.Start), w.Duration)
		}

		key = string(b)
	}

	if err, ok := seen[key]; ok {
		return err
	}

	_, err := window.NewSchedule(zone, windows)
	seen[key] = err

	return err
}

// Lab builds an inventory for a few standalone nodes (lab VMs): one site
// "lab" in UTC with no maintenance windows, and one single-node cluster per
// endpoint, named node-0, node-1, ... so that waves can take them one by one.
// All clusters share the talosconfig at talosconfig.
func Lab(talosconfig string, endpoints ...string) *Inventory {
	inv := &Inventory{Sites: []Site{{Name: "lab", Region: "lab", TimeZone: "UTC", Bandwidth: BandwidthHigh, Source: "lab"}}}

	for i, ep := range endpoints {
		inv.Clusters = append(inv.Clusters, Cluster{
			Name: fmt.Sprintf("node-%d", i), Site: "lab", Talosconfig: talosconfig, Source: "lab",
			Nodes: []Node{{Name: "node", Endpoint: ep, Role: RoleControlPlane}},
		})
	}

	inv.index()

	return inv
}
