// Package sim is a SIMULATED fleet for scale tests and demos: nodes that
// accept upgrades, stage, reboot, come back healthy or not, hang, and roll
// back, deterministically for a given seed. Everything that happens to a
// simulated node is appended to a journal file, so the simulated fleet
// outlives the fleetctl process driving it (kill -9 included) and the number
// of upgrades each node received can be counted afterwards.
//
// The fleet is driven in-process (Factory) or through the real Talos machine
// API over gRPC with mTLS on 127.0.0.1 (Serve).
package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Label marks every piece of simulator output.
const Label = "SIMULATED"

// Errors a simulated node answers with; the gRPC server maps them to status codes.
var (
	ErrUnreachable = errors.New("simulated node unreachable (rebooting or hung)")
	ErrNoPrevious  = errors.New("simulated node has no previous image to roll back to")
	// ErrEtcdQuorum is Talos's refusal to upgrade a control plane node of a
	// one-member etcd without preserve.
	ErrEtcdQuorum = errors.New("error validating etcd for upgrade: etcd member count(1) is insufficient to maintain quorum (upgrade with preserve)")
)

// Duration is a time.Duration written as "10ms".
type Duration time.Duration

// UnmarshalYAML accepts Go duration strings.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration", n.Line, n.Value)
	}

	*d = Duration(v)

	return nil
}

// MarshalYAML writes the Go duration string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Behaviour is sim.yaml: how the simulated nodes behave.
type Behaviour struct {
	// Seed makes failures reproducible: the same seed fails the same nodes.
	Seed int64 `yaml:"seed"`
	// InitialVersion is what every node runs before its first upgrade.
	InitialVersion string `yaml:"initialVersion"`
	// FailRate is the share (0-1) of nodes whose new version boots with an unhealthy service.
	FailRate float64 `yaml:"failRate,omitempty"`
	// HangRate is the share (0-1) of nodes that never come back from the upgrade reboot.
	HangRate float64 `yaml:"hangRate,omitempty"`
	// BadVersions fail on every node (a broken image).
	BadVersions []string `yaml:"badVersions,omitempty"`
	// FallbackVersions never finish booting: the node falls back to its
	// previous image by itself (systemd-boot boot counting) and reports that.
	FallbackVersions []string `yaml:"fallbackVersions,omitempty"`
	// Latency is added to every API call.
	Latency Duration `yaml:"latency,omitempty"`
	// StageTime is how long a node keeps running its old version after accepting an upgrade.
	StageTime Duration `yaml:"stageTime,omitempty"`
	// RebootTime is how long a node is unreachable while rebooting.
	RebootTime Duration `yaml:"rebootTime,omitempty"`
	// TalosLike makes nodes behave like real Talos where it matters to the
	// engine: the control plane node of a generated cluster (n0, a one-member
	// etcd) refuses an upgrade without preserve, and every node also lists a
	// service without a health check (healthy=false, unknown=true).
	TalosLike bool `yaml:"talosLike,omitempty"`
	// InitialDigest is the image digest every node runs before its first
	// upgrade ("" reports none). With the plan's version equal to
	// InitialVersion but another digest, nodes run a different build of the
	// same tag and must still be upgraded.
	InitialDigest string `yaml:"initialDigest,omitempty"`
	// KubeFaults make the cluster unhealthy on a node that runs the version
	// (key): "node-not-ready" (the Kubernetes node never gets Ready, e.g. a
	// broken CNI), "static-pod" (kube-apiserver never gets ready on a control
	// plane node) or "etcd-member" (the control plane node does not rejoin etcd).
	KubeFaults map[string]string `yaml:"kubeFaults,omitempty"`
	// Schematics give the image-factory schematic ID a node reports while
	// it runs the version (key), through the COSI State service as Talos
	// 1.14 does (resource ImageFactorySchematic). With none, `sim serve`
	// nodes serve no COSI State, like a node that cannot report one.
	Schematics map[string]string `yaml:"schematics,omitempty"`
	// StageFail lists nodes (cluster/node) whose image pulls fail (a site
	// whose link is down): staging cannot finish there.
	StageFail []string `yaml:"stageFail,omitempty"`
}

// Kubernetes faults of Behaviour.KubeFaults.
const (
	FaultNodeNotReady = "node-not-ready"
	FaultStaticPod    = "static-pod"
	FaultEtcdMember   = "etcd-member"
)

// Validate checks the behaviour.
func (b Behaviour) Validate() error {
	switch {
	case b.InitialVersion == "":
		return errors.New("sim.yaml: initialVersion: required")
	case b.FailRate < 0 || b.FailRate > 1:
		return fmt.Errorf("sim.yaml: failRate: %v is out of range (0-1)", b.FailRate)
	case b.HangRate < 0 || b.HangRate+b.FailRate > 1:
		return fmt.Errorf("sim.yaml: hangRate: %v is out of range (0-1, failRate+hangRate <= 1)", b.HangRate)
	}

	for v, fault := range b.KubeFaults {
		switch fault {
		case FaultNodeNotReady, FaultStaticPod, FaultEtcdMember:
		default:
			return fmt.Errorf("sim.yaml: kubeFaults: %s: unknown fault %q (want %s, %s or %s)", v, fault, FaultNodeNotReady, FaultStaticPod, FaultEtcdMember)
		}
	}

	return nil
}

const journalName = "journal.log"

// Fleet is the simulated fleet state.
type Fleet struct {
	b   Behaviour
	now func() time.Time

	mu      sync.Mutex
	nodes   map[string]*simNode
	journal *journal
	line    []byte // the journal line being built (f.mu held)
	// staged images per node and stage/switch counts, kept apart from
	// simNode: only rollouts that stage pay for them
	staged map[string]map[string]bool
	stages map[string]int
	checks map[string]int // StageChecker calls per node (staged.go)
}

type simNode struct {
	tried     []string // versions ever installed (a few: a slice is smaller than a map)
	versions  []string // boot history; last is the current image
	digests   []string // image digest of each entry of versions ("" unknown)
	lastKind  byte     // 'U' upgrade, 'R' rollback, 0 none
	lastAt    time.Time
	upgrades  int
	rollbacks int
	boots     int // upgrades, rollbacks and reboots: the boot ID (BootID)
	// fate of the last upgrade's version (f.fate(key, versions[last]) after
	// an 'U'): hashed once per upgrade, not on every call to the node
	fate float64
}

// Open loads (or starts) the fleet journal in dir. An empty dir keeps the
// fleet in memory only.
func Open(dir string, b Behaviour) (*Fleet, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}

	f := &Fleet{b: b, now: time.Now, nodes: map[string]*simNode{}}
	if dir == "" {
		return f, nil
	}

	j, events, err := openJournal(filepath.Join(dir, journalName))
	if err != nil {
		return nil, err
	}

	f.replay(events)
	f.journal = j

	return f, nil
}

// LoadBehaviour reads dir/sim.yaml.
func LoadBehaviour(dir string) (Behaviour, error) {
	var b Behaviour

	data, err := os.ReadFile(filepath.Join(dir, "sim.yaml"))
	if err != nil {
		return b, fmt.Errorf("reading simulator behaviour: %w", err)
	}

	if err := yaml.Unmarshal(data, &b); err != nil {
		return b, fmt.Errorf("sim.yaml: %w", err)
	}

	return b, b.Validate()
}

// OpenDir opens the fleet described by dir/sim.yaml with its journal.
func OpenDir(dir string) (*Fleet, error) {
	b, err := LoadBehaviour(dir)
	if err != nil {
		return nil, err
	}

	return Open(dir, b)
}

// replay applies the journal's complete events (whole lines).
func (f *Fleet) replay(events []byte) {
	for len(events) > 0 {
		i := bytes.IndexByte(events, '\n')
		line := events[:i]
		events = events[i+1:]

		ev, ok := parseEvent(string(line))
		if !ok {
			continue // not an event this version knows
		}

		f.apply(ev.Node, ev.Kind[0], ev.Version, ev.Digest, ev.At)
	}
}

func (f *Fleet) node(key string) *simNode {
	n := f.nodes[key]
	if n == nil {
		n = &simNode{versions: []string{f.b.InitialVersion}, digests: []string{f.b.InitialDigest}}
		f.nodes[key] = n
	}

	return n
}

func (f *Fleet) apply(key string, kind byte, version, digest string, at time.Time) {
	n := f.node(key)

	switch kind {
	case 'U':
		n.versions = append(n.versions, version)
		n.digests = append(n.digests, digest)
		n.upgrades++

		if !slices.Contains(n.tried, version) {
			n.tried = append(n.tried, version)
		}

		n.fate = f.fate(key, version)
	case 'R':
		if len(n.versions) > 1 {
			n.versions = n.versions[:len(n.versions)-1]
			n.digests = n.digests[:len(n.digests)-1]
		}

		n.rollbacks++
	}

	n.boots++
	n.lastKind, n.lastAt = kind, at
}

// record persists an event before it takes effect: a node "accepts" only what
// survives the simulator's own crash.
func (f *Fleet) record(key string, kind byte, version, digest string) error {
	at := f.now()

	if f.journal != nil {
		if !f.journal.owner {
			events, err := f.journal.acquire()
			if err != nil {
				return fmt.Errorf("writing simulator journal: %w", err)
			}

			f.replay(events)
		}

		// "kind node version [digest] unixnano", built in a buffer kept
		// for the next event (f.mu held).
		b := append(f.line[:0], kind, '\t')
		b = append(b, key...)
		b = append(b, '\t')
		b = append(b, version...)

		if digest != "" {
			b = append(b, '\t')
			b = append(b, digest...)
		}

		b = append(b, '\t')
		b = strconv.AppendInt(b, at.UnixNano(), 10)
		b = append(b, '\n')
		f.line = b

		if err := f.journal.append(b); err != nil {
			return fmt.Errorf("writing simulator journal: %w", err)
		}
	}

	f.apply(key, kind, version, digest, at)

	return nil
}

// Close closes the journal.
//
// It holds the fleet's lock: the journal's mapping must not go away under
// a call still recording (a call after Close fails with the closed file's error).
func (f *Fleet) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()

	if f.journal == nil {
		return nil
	}

	return f.journal.close()
}

// fate is a deterministic number in [0,1) per node and version. apply
// keeps the one of a node's last upgrade (simNode.fate): every call to an
// upgraded node asks it, and hashing on each call was 4 % of a 30,000-node
// rollout's CPU samples.
func (f *Fleet) fate(key, version string) float64 {
	// FNV-1a over "SEED/KEY/VERSION", written without fmt and not kept:
	// hashing is cheaper than a map per node (300,000 nodes held 60 MB of
	// them), and the value is the same as ever for a given seed.
	var buf [96]byte

	b := strconv.AppendInt(buf[:0], f.b.Seed, 10)
	b = append(b, '/')
	b = append(b, key...)
	b = append(b, '/')
	b = append(b, version...)

	h := fnv.New64a()
	h.Write(b) //nolint:errcheck // hash.Hash never fails

	return float64(h.Sum64()>>11) / math.Exp2(53)
}

// fails reports whether the version of n's last upgrade boots unhealthy.
func (f *Fleet) fails(n *simNode) bool {
	version := n.versions[len(n.versions)-1]
	for _, v := range f.b.BadVersions {
		if v == version {
			return true
		}
	}

	return n.fate < f.b.FailRate
}

// hangs reports whether n never comes back from its last upgrade.
func (f *Fleet) hangs(n *simNode) bool {
	return n.fate >= f.b.FailRate && n.fate < f.b.FailRate+f.b.HangRate
}

// phase of a node now.
type phase int

const (
	phaseUp phase = iota
	phaseStaging
	phaseRebooting
	phaseHung
)

func (f *Fleet) phase(key string, n *simNode) phase {
	if n.lastKind == 0 {
		return phaseUp
	}

	since := f.now().Sub(n.lastAt)
	stage, reboot := time.Duration(f.b.StageTime), time.Duration(f.b.RebootTime)

	if n.lastKind == 'U' {
		switch {
		case since < stage:
			return phaseStaging
		case since < stage+reboot:
			return phaseRebooting
		case f.hangs(n):
			return phaseHung
		}

		return phaseUp
	}

	// Rollback ('R') and plain reboot ('B') only take the reboot time.
	if since < reboot {
		return phaseRebooting
	}

	return phaseUp
}

// Reboot restarts the node on its current image.
func (f *Fleet) Reboot(key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	switch f.phase(key, f.node(key)) {
	case phaseRebooting, phaseHung:
		return ErrUnreachable
	}

	return f.record(key, 'B', "", "")
}

// Version is what the node reports now.
func (f *Fleet) Version(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)

	switch f.phase(key, n) {
	case phaseStaging:
		return n.versions[len(n.versions)-2], nil
	case phaseRebooting, phaseHung:
		return "", ErrUnreachable
	}

	return f.running(n), nil
}

// BootID is the boot ID the node publishes (as Talos's COSI BootID): the
// same while an upgrade is still being staged, a new one once the node has
// rebooted, whichever image it came back on.
func (f *Fleet) BootID(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)
	boots := n.boots

	switch f.phase(key, n) {
	case phaseStaging:
		boots--
	case phaseRebooting, phaseHung:
		return "", ErrUnreachable
	}

	return fmt.Sprintf("%s#%d", key, boots), nil
}

// Image is the image the node reports: the digest recorded with the upgrade
// it runs (InitialDigest before the first).
func (f *Fleet) Image(key string) (driver.ImageID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)

	i, err := f.current(key, n)
	if err != nil {
		return driver.ImageID{}, err
	}

	return driver.ImageID{Version: n.versions[i], Digest: n.digests[i]}, nil
}

// current is the index in n.versions of the image the node runs now.
func (f *Fleet) current(key string, n *simNode) (int, error) {
	last := len(n.versions) - 1

	switch f.phase(key, n) {
	case phaseStaging:
		return last - 1, nil
	case phaseRebooting, phaseHung:
		return 0, ErrUnreachable
	}

	if n.lastKind == 'U' && slices.Contains(f.b.FallbackVersions, n.versions[last]) {
		return last - 1, nil
	}

	return last, nil
}

// Cluster is what the node's cluster reports about it (see
// Behaviour.KubeFaults). Etcd lists this node by its name and the other
// control plane nodes as peer-1, peer-2, ...
func (f *Fleet) Cluster(t driver.Target) (driver.ClusterStatus, error) {
	key := Key(t.Cluster, t.Node)

	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)

	i, err := f.current(key, n)
	if err != nil {
		return driver.ClusterStatus{}, err
	}

	fault := f.b.KubeFaults[n.versions[i]]
	st := driver.ClusterStatus{NodeReady: fault != FaultNodeNotReady}

	if !st.NodeReady {
		st.NodeReason = "SIMULATED KubeletNotReady: container runtime network not ready: cni plugin not initialized"
	}

	if t.Role != "controlplane" {
		return st, nil
	}

	for _, app := range driver.ControlPlanePods {
		st.Pods = append(st.Pods, driver.Pod{App: app, Phase: "Running", Ready: !(fault == FaultStaticPod && app == "kube-apiserver")})
	}

	if fault != FaultEtcdMember {
		st.Etcd = append(st.Etcd, driver.EtcdMember{Hostname: t.Node})
	}

	for p := 1; p < t.ControlPlanes; p++ {
		st.Etcd = append(st.Etcd, driver.EtcdMember{Hostname: fmt.Sprintf("peer-%d", p)})
	}

	return st, nil
}

// FailedEntries lists boot entries the node fell back from, named as labos
// names them (sim-<version>.efi).
func (f *Fleet) FailedEntries(key string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()

	var out []string

	for _, v := range f.b.FallbackVersions {
		if slices.Contains(f.node(key).tried, v) {
			out = append(out, "sim-"+v+".efi")
		}
	}

	return out
}

// running is the version a node that is up actually runs.
func (f *Fleet) running(n *simNode) string {
	current := n.versions[len(n.versions)-1]
	if n.lastKind == 'U' && slices.Contains(f.b.FallbackVersions, current) {
		return n.versions[len(n.versions)-2]
	}

	return current
}

// Upgrade accepts an upgrade to version, unless one is in progress.
func (f *Fleet) Upgrade(key, version string) error {
	return f.UpgradePreserve(key, version, true)
}

// UpgradePreserve is Upgrade with Talos's preserve flag, which a TalosLike
// control plane node requires.
func (f *Fleet) UpgradePreserve(key, version string, preserve bool) error {
	return f.UpgradeImage(key, version, "", preserve)
}

// UpgradeImage is UpgradePreserve that also records the image's digest,
// which the node then reports (Image).
func (f *Fleet) UpgradeImage(key, version, digest string, preserve bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)

	if f.b.TalosLike && !preserve && strings.HasSuffix(key, "/n0") {
		return ErrEtcdQuorum
	}

	switch f.phase(key, n) {
	case phaseStaging:
		return driver.ErrInProgress
	case phaseRebooting, phaseHung:
		return ErrUnreachable
	}

	return f.record(key, 'U', version, digest)
}

// Stage pulls image onto the node (driver.Stager): nothing it boots
// changes. A node in StageFail cannot fetch it.
func (f *Fleet) Stage(key, image string) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)

	switch f.phase(key, n) {
	case phaseRebooting, phaseHung:
		return ErrUnreachable
	}

	if slices.Contains(f.b.StageFail, key) {
		return fmt.Errorf("SIMULATED: pulling %s: connection reset by peer", image)
	}

	if f.staged == nil {
		f.staged, f.stages = map[string]map[string]bool{}, map[string]int{}
	}

	if f.staged[key] == nil {
		f.staged[key] = map[string]bool{}
	}

	f.staged[key][image] = true
	f.stages[key]++

	return nil
}

// Switch installs a staged image and reboots into it (driver.Stager).
func (f *Fleet) Switch(key, image string, preserve bool) error {
	f.mu.Lock()
	staged := f.staged[key][image]
	f.mu.Unlock()

	if !staged {
		return fmt.Errorf("SIMULATED: %s: %w", image, driver.ErrNotStaged)
	}

	_, digest, _ := strings.Cut(image, "@")

	return f.UpgradeImage(key, VersionOf(image), digest, preserve)
}

// Stages is how many times each node pulled an image ahead.
func (f *Fleet) Stages() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()

	return maps.Clone(f.stages)
}

// Rollback boots the previous image.
func (f *Fleet) Rollback(key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)

	switch f.phase(key, n) {
	case phaseRebooting, phaseHung:
		return ErrUnreachable
	}

	if len(n.versions) < 2 {
		return ErrNoPrevious
	}

	return f.record(key, 'R', "", "")
}

// Services is the node's service list (the labos set).
func (f *Fleet) Services(key string) ([]driver.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	n := f.node(key)

	switch f.phase(key, n) {
	case phaseRebooting, phaseHung:
		return nil, ErrUnreachable
	}

	current := f.running(n)
	bad := n.lastKind == 'U' && current == n.versions[len(n.versions)-1] && f.fails(n)

	out := make([]driver.Service, 0, 5)
	for _, id := range []string{nodeapi.ServiceTPMUnlock, nodeapi.ServiceState, nodeapi.ServiceAPI, nodeapi.ServiceEBPF, nodeapi.ServiceAddons} {
		s := driver.Service{ID: id, State: "Running", Healthy: true}
		if bad && id == nodeapi.ServiceAddons {
			s.Healthy, s.State, s.Message = false, "Failed", "SIMULATED failure of "+current
		}

		out = append(out, s)
	}

	if f.b.TalosLike {
		// Talos lists services without a health check as unknown, never healthy.
		out = append(out, driver.Service{ID: "dashboard", State: "Running", NoHealthCheck: true})
	}

	return out, nil
}

// Counts are per-node event counts.
type Counts struct {
	Upgrades  int
	Rollbacks int
}

// Counts returns the event counts of every node the fleet has seen.
func (f *Fleet) Counts() map[string]Counts {
	f.mu.Lock()
	defer f.mu.Unlock()

	out := make(map[string]Counts, len(f.nodes))
	for k, n := range f.nodes {
		out[k] = Counts{Upgrades: n.upgrades, Rollbacks: n.rollbacks}
	}

	return out
}

// ReadJournal returns the events recorded in dir, in order: kind ('U' or 'R') and node key.
func ReadJournal(dir string) ([]Event, error) {
	data, err := os.ReadFile(filepath.Join(dir, journalName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("reading simulator journal: %w", err)
	}

	var out []Event

	for line := range strings.Lines(string(data)) {
		if !strings.HasSuffix(line, "\n") {
			continue
		}

		if ev, ok := parseEvent(strings.TrimSuffix(line, "\n")); ok {
			out = append(out, ev)
		}
	}

	return out, nil
}

// Event is one journal line.
type Event struct {
	Kind    string // "U" or "R"
	Node    string // cluster/node
	Version string
	Digest  string // image digest of an upgrade, if the request carried one
	At      time.Time
}

// parseEvent reads "kind node version [digest] unixnano".
func parseEvent(line string) (Event, bool) {
	parts := strings.Split(line, "\t")
	if (len(parts) != 4 && len(parts) != 5) || parts[0] == "" {
		return Event{}, false
	}

	ns, err := strconv.ParseInt(parts[len(parts)-1], 10, 64)
	if err != nil {
		return Event{}, false
	}

	ev := Event{Kind: parts[0], Node: parts[1], Version: parts[2], At: time.Unix(0, ns)}
	if len(parts) == 5 {
		ev.Digest = parts[3]
	}

	return ev, true
}

// Key names a node in the journal.
func Key(cluster, node string) string { return cluster + "/" + node }

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}

	tm := time.NewTimer(d)
	defer tm.Stop()

	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
