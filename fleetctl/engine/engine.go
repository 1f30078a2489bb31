// Package engine executes rollouts: waves in order, clusters in parallel up
// to the wave's concurrency, nodes of a cluster one control plane node at a
// time (workers up to maxUnavailable), inside each site's maintenance
// windows, under regional and bandwidth caps, each node through a health
// gate, with failure budgets that halt the rollout and automatic rollback.
//
// Every node transition is committed to the store before the node is asked
// to act and again after, so Resume after a crash (kill -9 included) knows
// which nodes may have been touched and asks them their version instead of
// upgrading them again.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Sentinel errors callers branch on (the CLI maps them to exit codes).
var (
	// ErrHalted: a failure budget was spent; the rollout stopped by itself.
	ErrHalted = errors.New("rollout halted: failure budget spent")
	// ErrPaused: an operator paused the rollout; Resume continues it.
	ErrPaused = errors.New("rollout paused")
	// ErrAborted: an operator aborted the rollout.
	ErrAborted = errors.New("rollout aborted")
	// ErrInterrupted: the process was asked to stop (signal); Resume continues.
	ErrInterrupted = errors.New("rollout interrupted")
)

// Clock lets tests run maintenance windows and gates on simulated time.
type Clock interface {
	Now() time.Time
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()

	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Options configure Run and Resume.
type Options struct {
	// Inventory and Plan define a new rollout (Run only).
	Inventory *inventory.Inventory
	Plan      *plan.Plan
	// Store persists the rollout (required).
	Store *store.Store
	// Driver opens nodes (required).
	Driver driver.Factory
	// Cluster checks the Kubernetes node, static pods and etcd when the plan
	// sets health.kubernetes (required then). Nil uses Driver if it is a
	// driver.ClusterOpener (the talos and sim drivers are).
	Cluster driver.ClusterOpener
	// DriverName is recorded with the rollout ("talos", "sim:<dir>", "talos:simulated");
	// see IsSimulated.
	DriverName string
	// Logger receives progress; nil discards.
	Logger *slog.Logger
	// Actor is who acts, for the audit log (default user@host).
	Actor string
	// Clock defaults to the wall clock.
	Clock Clock
	// ControlPoll is how often pause/abort requests are read from the store (default 250ms).
	ControlPoll time.Duration
	// CallTimeout overrides the plan's health.callTimeout (tests); 0 uses the plan.
	CallTimeout time.Duration
	// Force takes over a lease held on another host whose heartbeat expired
	// (never a live holder; a dead holder on this host is taken over anyway).
	Force bool
	// OnResumed is called once state is loaded and the lease taken (resume latency measurements).
	OnResumed func()
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	if o.Actor == "" {
		o.Actor = store.Actor()
	}

	if o.Clock == nil {
		o.Clock = realClock{}
	}

	if co, ok := o.Driver.(driver.ClusterOpener); ok && o.Cluster == nil {
		o.Cluster = co
	}

	if o.ControlPoll <= 0 {
		o.ControlPoll = 250 * time.Millisecond
	}

}

// WaveResult summarises one wave.
type WaveResult struct {
	Index       int    `json:"index"`
	Name        string `json:"name"`
	State       string `json:"state"`
	Nodes       int    `json:"nodes"`
	Done        int    `json:"done"`
	Failed      int    `json:"failed"`
	Skipped     int    `json:"skipped"`
	InFlight    int    `json:"inFlight"`
	Pending     int    `json:"pending"`
	MaxFailures int    `json:"maxFailures"`
}

// Result summarises a rollout after Run or Resume returns.
type Result struct {
	RolloutID  string       `json:"rollout"`
	Name       string       `json:"name"`
	State      string       `json:"state"`
	Reason     string       `json:"reason,omitempty"`
	Simulated  bool         `json:"simulated"`
	Waves      []WaveResult `json:"waves"`
	Nodes      int          `json:"nodes"`
	Done       int          `json:"done"`
	Failed     int          `json:"failed"`
	RolledBack int          `json:"rolledBack"`
	Skipped    int          `json:"skipped"`
	Pending    int          `json:"pending"`
}

// NewID returns a rollout id: time-ordered and unique enough for one fleet.
func NewID(now time.Time) string {
	b := make([]byte, 3)
	rand.Read(b) //nolint:errcheck // crypto/rand.Read never fails

	return "r-" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// Create writes a new rollout for opts.Inventory and opts.Plan and returns its id
// without executing it.
func Create(ctx context.Context, opts Options) (string, error) {
	id, _, err := create(ctx, opts)

	return id, err
}

// create is Create that also returns the node rows it wrote, in id order
// and as store.Nodes would read them back, for Run to execute from.
func create(ctx context.Context, opts Options) (string, []store.Node, error) {
	opts.defaults()

	if opts.Store == nil || opts.Inventory == nil || opts.Plan == nil {
		return "", nil, errors.New("engine: Store, Inventory and Plan are required")
	}

	a, err := opts.Plan.Assign(opts.Inventory)
	if err != nil {
		return "", nil, err
	}

	planJSON, err := json.Marshal(opts.Plan)
	if err != nil {
		return "", nil, fmt.Errorf("encoding plan: %w", err)
	}

	r := store.Rollout{
		ID: NewID(opts.Clock.Now()), Name: opts.Plan.Name, Image: opts.Plan.Image, Version: opts.Plan.Version,
		Plan: string(planJSON), Driver: opts.DriverName,
	}

	// Sized up front: growing them by appends copied the node slice over
	// and over (32 MB allocated at 30,000 nodes for a 6 MB result).
	clusters := make(map[string]*inventory.Cluster, len(opts.Inventory.Clusters))
	for i := range opts.Inventory.Clusters {
		clusters[opts.Inventory.Clusters[i].Name] = &opts.Inventory.Clusters[i]
	}

	total := 0
	for _, wa := range a.Waves {
		total += wa.Nodes
	}

	var (
		sites []store.Site
		waves = make([]store.Wave, 0, len(a.Waves))
		nodes = make([]store.Node, 0, total)
	)

	seenSite := map[string]bool{}

	for _, wa := range a.Waves {
		waves = append(waves, store.Wave{
			Index: wa.Index, Name: wa.Name, Clusters: len(wa.Clusters), Nodes: wa.Nodes,
			MaxFailures: wa.MaxFailures, Concurrency: opts.Plan.WaveConcurrency(wa.Index),
		})

		for _, cn := range wa.Clusters {
			c := clusters[cn]
			s, _ := opts.Inventory.Site(c.Site)

			if !seenSite[s.Name] {
				seenSite[s.Name] = true

				w, err := json.Marshal(s.Windows)
				if err != nil {
					return "", nil, fmt.Errorf("encoding windows: %w", err)
				}

				sites = append(sites, store.Site{Name: s.Name, TimeZone: s.TimeZone, Windows: string(w)})
			}

			bw := s.Bandwidth
			if bw == "" {
				bw = inventory.BandwidthMedium
			}

			// Frozen absolute: resume may run from another directory
			// (a relative path there names other credentials, or none).
			tc := c.Talosconfig
			if tc != "" {
				if tc, err = filepath.Abs(tc); err != nil {
					return "", nil, fmt.Errorf("cluster %s: talosconfig: %w", c.Name, err)
				}
			}

			for _, n := range c.Nodes {
				nodes = append(nodes, store.Node{
					ID: len(nodes), Wave: wa.Index, Cluster: c.Name, Name: n.Name, Endpoint: n.Address(), Role: n.Role,
					Site: s.Name, Region: s.Region, Bandwidth: bw, Talosconfig: tc,
				})
			}
		}
	}

	if err := opts.Store.CreateRollout(ctx, r, sites, waves, rowOrder(nodes, opts.Plan.MaxUnavailable), opts.Actor); err != nil {
		return "", nil, fmt.Errorf("creating rollout: %w", err)
	}

	return r.ID, asWritten(nodes), nil
}

// asWritten turns the nodes Create wrote (in row order) into what
// store.Nodes reads back from a new rollout: id order, every node pending
// with no history, repeated values sharing one copy. Run executes from
// them instead of reading 30,000 rows back right after writing them.
func asWritten(nodes []store.Node) []store.Node {
	// Ids are 0..len-1 (Create numbers them): put each in its place by
	// following the permutation's cycles, without a second slice.
	for i := range nodes {
		for nodes[i].ID != i {
			d := nodes[i].ID
			nodes[i], nodes[d] = nodes[d], nodes[i]
		}
	}

	seen := map[string]string{}
	intern := func(p *string) {
		if v, ok := seen[*p]; ok {
			*p = v
		} else {
			seen[*p] = *p
		}
	}

	for i := range nodes {
		n := &nodes[i]
		n.State = store.NodePending

		for _, p := range []*string{&n.Cluster, &n.Name, &n.Role, &n.Site, &n.Region, &n.Bandwidth, &n.Talosconfig, &n.State} {
			intern(p)
		}
	}

	return nodes
}

// Run creates a rollout from opts.Inventory and opts.Plan and executes it to
// the end (completed), or until it is halted, paused, aborted or ctx ends.
// The returned error is nil only for a completed rollout; Result is filled
// in every case where the rollout exists.
func Run(ctx context.Context, opts Options) (Result, error) {
	id, nodes, err := create(ctx, opts)
	if err != nil {
		return Result{}, err
	}

	// The rollout runs from what Create froze in the store; letting the
	// inventory go frees its memory (tens of MB at 300,000 nodes) for the run.
	opts.Inventory = nil

	return resume(ctx, opts, id, nodes)
}

// Resume continues rollout id (empty: the most recent one) after a pause, an
// interruption or a crash, reconciling in-flight nodes by asking them their version.
func Resume(ctx context.Context, opts Options, id string) (Result, error) {
	return resume(ctx, opts, id, nil)
}

// resume is Resume; created, if not nil, are the node rows Run just wrote
// (asWritten), used instead of reading them back.
func resume(ctx context.Context, opts Options, id string, created []store.Node) (Result, error) {
	opts.defaults()

	if opts.Store == nil || opts.Driver == nil {
		return Result{}, errors.New("engine: Store and Driver are required")
	}

	r, err := opts.Store.Rollout(ctx, id)
	if err != nil {
		return Result{}, err
	}

	e := &execution{opts: opts, rollout: r, log: opts.Logger.With("rollout", r.ID)}

	// Rows written a moment ago are what the store holds unless another
	// process took the rollout up in between (it would hold or have held
	// its lease): then read them as any resume does.
	if r.LeaseAt.IsZero() && r.LeaseHost == "" {
		e.created = created
	}

	return e.run(ctx)
}

// Summarise reads a rollout's progress from the store.
func Summarise(ctx context.Context, st *store.Store, id string) (Result, error) {
	return summarise(ctx, st, id, func(rollout string) (store.Counts, int, error) {
		return nodeCounts(ctx, st, rollout)
	})
}

// summarise is Summarise with the node counts taken from count: the
// store's, or those of an execution that holds every node row of the
// rollout in memory, each mirrored after its write was committed.
func summarise(ctx context.Context, st *store.Store, id string, count func(rollout string) (store.Counts, int, error)) (Result, error) {
	r, err := st.Rollout(ctx, id)
	if err != nil {
		return Result{}, err
	}

	waves, err := st.Waves(ctx, r.ID)
	if err != nil {
		return Result{}, err
	}

	counts, rolledBack, err := count(r.ID)
	if err != nil {
		return Result{}, err
	}

	res := Result{RolloutID: r.ID, Name: r.Name, State: r.State, Reason: r.Reason, Simulated: IsSimulated(r.Driver), RolledBack: rolledBack}

	for _, w := range waves {
		c := counts[w.Index]
		wr := WaveResult{
			Index: w.Index, Name: w.Name, State: w.State, Nodes: w.Nodes, MaxFailures: w.MaxFailures,
			Done: c[store.NodeDone], Failed: c[store.NodeFailed], Skipped: c[store.NodeSkipped],
			InFlight: c[store.NodeRequested] + c[store.NodeAccepted] + c[store.NodeRollingBack], Pending: c[store.NodePending],
		}
		res.Waves = append(res.Waves, wr)
		res.Nodes += wr.Nodes
		res.Done += wr.Done
		res.Failed += wr.Failed
		res.Skipped += wr.Skipped
		res.Pending += wr.Pending + wr.InFlight
	}

	return res, nil
}

// nodeCounts is store.NodeCounts and the number of rolled back nodes from
// one pass over the rollout's node rows instead of two (each a scan of
// 30,000 rows at the end of a rollout).
func nodeCounts(ctx context.Context, st *store.Store, id string) (store.Counts, int, error) {
	rows, err := st.DB().QueryContext(ctx, `SELECT wave, state, COUNT(*), SUM(rolled_back) FROM nodes WHERE rollout_id = ? GROUP BY wave, state`, id)
	if err != nil {
		return nil, 0, fmt.Errorf("counting nodes: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	var (
		out        = store.Counts{}
		rolledBack int
	)

	for rows.Next() {
		var (
			w, n, rb int
			state    string
		)

		if err := rows.Scan(&w, &state, &n, &rb); err != nil {
			return nil, 0, fmt.Errorf("counting nodes: %w", err)
		}

		if out[w] == nil {
			out[w] = map[string]int{}
		}

		out[w][state] = n
		rolledBack += rb
	}

	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("counting nodes: %w", err)
	}

	return out, rolledBack, nil
}

// IsSimulated reports whether a recorded driver name drives SIMULATED nodes:
// the in-process simulator ("sim:<dir>") or the real driver against nodes
// served by the simulator ("talos:simulated").
func IsSimulated(driverName string) bool {
	return strings.HasPrefix(driverName, "sim") || strings.HasSuffix(driverName, ":simulated")
}

func hostname() string {
	h, _ := os.Hostname()

	return h
}

// rowOrder puts nodes (ids unchanged) in the order their rows are
// written, which is their order on disk: by wave, then by the step of its
// cluster's sequence a node is upgraded in (runCluster: control planes one
// at a time, then workers maxUnavailable at a time), then in cluster order.
// A wave's clusters run side by side and mostly reach a step together, so
// the nodes in flight at any moment have neighbouring rows: each group
// commit of their transitions rewrites far fewer table pages than with rows
// in id order (a cluster's nodes side by side, only one of them in flight).
// Only the layout differs; every read orders by id.
func rowOrder(nodes []store.Node, maxUnavailable int) []store.Node {
	batch := max(maxUnavailable, 1)
	step := make([]int, len(nodes))

	for i := 0; i < len(nodes); {
		j := i
		for j < len(nodes) && nodes[j].Wave == nodes[i].Wave && nodes[j].Cluster == nodes[i].Cluster {
			j++
		}

		cps := 0

		for k := i; k < j; k++ {
			if nodes[k].Role == inventory.RoleControlPlane {
				cps++
			}
		}

		cp, w := 0, 0

		for k := i; k < j; k++ {
			if nodes[k].Role == inventory.RoleControlPlane {
				step[k] = cp
				cp++
			} else {
				step[k] = cps + w/batch
				w++
			}
		}

		i = j
	}

	// A stable counting sort per wave (waves are contiguous, steps small),
	// applied in place by following the permutation's cycles: a copy of
	// 300,000 nodes would add tens of MB to the peak.
	dest := make([]int, len(nodes))

	for i := 0; i < len(nodes); {
		j := i
		for j < len(nodes) && nodes[j].Wave == nodes[i].Wave {
			j++
		}

		var count []int

		for k := i; k < j; k++ {
			for len(count) <= step[k] {
				count = append(count, 0)
			}

			count[step[k]]++
		}

		at := i

		for st, c := range count {
			count[st] = at
			at += c
		}

		for k := i; k < j; k++ {
			dest[k] = count[step[k]]
			count[step[k]]++
		}

		i = j
	}

	for i := range nodes {
		for dest[i] != i {
			d := dest[i]
			nodes[i], nodes[d] = nodes[d], nodes[i]
			dest[i], dest[d] = dest[d], d
		}
	}

	return nodes
}
