package overview

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

var errNoNode = errors.New("node not found")

// HistoryEntry is what one rollout did to a node (from its record).
type HistoryEntry struct {
	Rollout      string    `json:"rollout"`
	RolloutName  string    `json:"rolloutName"`
	Target       string    `json:"target"`
	FromVersion  string    `json:"fromVersion,omitempty"`
	State        string    `json:"state"`
	Kind         string    `json:"kind"` // upgrade, rollback, fallback, failed, skipped, pending, in-flight
	Error        string    `json:"error,omitempty"`
	RolledBack   bool      `json:"rolledBack"`
	UpgradeCalls int       `json:"upgradeCalls"`
	UpdatedAt    time.Time `json:"updatedAt,omitzero"`
	// Steps are the audit lines of the node in this rollout, oldest first.
	Steps []Step `json:"steps"`
}

// Step is one audit line about a node.
type Step struct {
	At     time.Time `json:"at"`
	Action string    `json:"action"`
	Detail string    `json:"detail,omitempty"`
	Actor  string    `json:"actor"`
}

// NodeDetail is GET /api/v1/nodes/{cluster}/{node}.
type NodeDetail struct {
	view
	Labels  map[string]string `json:"labels,omitempty"`
	History []HistoryEntry    `json:"history"` // newest first
	// Events and KernelLog come from the node's own reports through the hub;
	// FactsSource says whether anything reports them here.
	Events      []string `json:"events"`
	KernelLog   []string `json:"kernelLog"`
	FactsSource string   `json:"factsSource"`
}

func kind(n store.Node) string {
	switch n.State {
	case store.NodeDone:
		return "upgrade"
	case store.NodeFailed:
		switch {
		case n.RolledBack:
			return "rollback"
		case strings.Contains(n.Error, "fell back"):
			return "fallback"
		}

		return "failed"
	case store.NodeSkipped:
		return "skipped"
	case store.NodePending:
		return "pending"
	}

	return "in-flight"
}

func (s *Server) nodeDetail(ctx context.Context, snap *snapshot, cluster, node string) (NodeDetail, error) {
	i, ok := snap.byKey[key(cluster, node)]
	if !ok {
		return NodeDetail{}, fmt.Errorf("%w: %s/%s", errNoNode, cluster, node)
	}

	v, f := snap.view(i, s.opts.Facts)
	d := NodeDetail{view: v, Labels: snap.clusters[snap.byClust[cluster]].Labels, Events: f.Events, KernelLog: f.KernelLog,
		FactsSource: "none: events and kernel log are reported by the nodes through fleetctl hub (not connected here)"}

	if s.opts.Facts != nil {
		d.FactsSource = "hub"
	}

	if d.Events == nil {
		d.Events = []string{}
	}

	if d.KernelLog == nil {
		d.KernelLog = []string{}
	}

	db := s.opts.Store.DB()

	// Newest rollout first.
	for ri := len(snap.rollouts) - 1; ri >= 0; ri-- {
		r := snap.rollouts[ri]

		var (
			n        store.Node
			rb       int
			up       int64
			auditIDs string
		)

		// The node's audit lines are listed by id on its rows: its
		// transitions on the node row, its staging lines on the staging row
		// (migration 0014; a node's lines are not indexed by subject).
		err := db.QueryRowContext(ctx, `SELECT n.state, n.from_version, n.error, n.rolled_back, n.upgrade_calls, n.updated_at,
			n.audit_ids || ',' || COALESCE((SELECT s.audit_ids FROM staging s WHERE s.rollout_id = n.rollout_id AND s.node = n.id), '')
			FROM nodes n WHERE n.rollout_id = ? AND n.cluster = ? AND n.name = ?`, r.ID, cluster, node).
			Scan(&n.State, &n.FromVersion, &n.Error, &rb, &n.UpgradeCalls, &up, &auditIDs)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}

		if err != nil {
			return NodeDetail{}, fmt.Errorf("reading node history: %w", err)
		}

		n.RolledBack = rb != 0

		h := HistoryEntry{
			Rollout: r.ID, RolloutName: r.Name, Target: r.Version, FromVersion: n.FromVersion, State: n.State, Kind: kind(n),
			Error: n.Error, RolledBack: n.RolledBack, UpgradeCalls: n.UpgradeCalls, Steps: []Step{},
		}
		if up != 0 {
			h.UpdatedAt = time.Unix(0, up).UTC()
		}

		// A rowid lookup per listed id; the list is a JSON array once
		// wrapped (empty entries from the join dropped).
		rows, err := db.QueryContext(ctx, `SELECT at, action, detail, actor FROM audit
			WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id`, idList(auditIDs))
		if err != nil {
			return NodeDetail{}, fmt.Errorf("reading node audit: %w", err)
		}

		for rows.Next() {
			var (
				st Step
				at int64
			)

			if err := rows.Scan(&at, &st.Action, &st.Detail, &st.Actor); err != nil {
				rows.Close() //nolint:errcheck

				return NodeDetail{}, fmt.Errorf("reading node audit: %w", err)
			}

			st.At = time.Unix(0, at).UTC()
			h.Steps = append(h.Steps, st)
		}

		rows.Close() //nolint:errcheck

		d.History = append(d.History, h)
	}

	if d.History == nil {
		d.History = []HistoryEntry{}
	}

	return d, nil
}

// Budget is a failure budget's use.
type Budget struct {
	Allowed int `json:"allowed"`
	Used    int `json:"used"`
	Left    int `json:"left"`
}

func budget(allowed, used int) Budget {
	return Budget{Allowed: allowed, Used: used, Left: max(allowed-used, 0)}
}

// Failure is a failed node with the reason its gate gave.
type Failure struct {
	Cluster    string    `json:"cluster"`
	Node       string    `json:"node"`
	Site       string    `json:"site"`
	Wave       int       `json:"wave"`
	Error      string    `json:"error"`
	RolledBack bool      `json:"rolledBack"`
	At         time.Time `json:"at"`
}

// WaitingSite is a site whose pending nodes of the current wave wait for its window.
type WaitingSite struct {
	Site     string    `json:"site"`
	Nodes    int       `json:"nodes"`
	NextOpen time.Time `json:"nextOpen"`
}

// RolloutDetail is GET /api/v1/rollouts/{id} and each live event: the CLI's
// status plus what the page draws.
type RolloutDetail struct {
	Status  Status        `json:"status"`
	Rollout store.Rollout `json:"rollout"`
	// Budget is the overall failure budget; WaveBudgets the per-wave ones (by wave index).
	Budget      Budget   `json:"budget"`
	WaveBudgets []Budget `json:"waveBudgets"`
	// Failures are the newest failed nodes (at most 200); FailuresTotal counts all.
	Failures      []Failure     `json:"failures"`
	FailuresTotal int           `json:"failuresTotal"`
	Waiting       []WaitingSite `json:"waiting"`
}

const maxFailuresShown = 200

func (s *Server) rolloutDetail(ctx context.Context, id string) (RolloutDetail, error) {
	now := s.opts.Now()

	st, err := rolloutStatus(ctx, s.opts.Store, id, now, func(id string) (map[string]*window.Schedule, error) { return s.schedules(ctx, id) })
	if err != nil {
		return RolloutDetail{}, err
	}

	r, err := s.opts.Store.Rollout(ctx, st.RolloutID)
	if err != nil {
		return RolloutDetail{}, err
	}

	d := RolloutDetail{Status: st, Rollout: *r, Failures: []Failure{}, Waiting: []WaitingSite{}, FailuresTotal: st.Failed}

	var p plan.Plan
	if err := json.Unmarshal([]byte(r.Plan), &p); err != nil {
		return RolloutDetail{}, fmt.Errorf("decoding the frozen plan of %s: %w", r.ID, err)
	}

	d.Budget = budget(plan.Allowed(p.Budget.MaxFailures, p.Budget.MaxFailurePercent, st.Nodes), st.Failed)
	for _, w := range st.Waves {
		d.WaveBudgets = append(d.WaveBudgets, budget(w.MaxFailures, w.Failed))
	}

	rows, err := s.opts.Store.DB().QueryContext(ctx, `SELECT cluster, name, site, wave, error, rolled_back, updated_at FROM nodes
		WHERE rollout_id = ? AND state = ? ORDER BY updated_at DESC LIMIT ?`, r.ID, store.NodeFailed, maxFailuresShown)
	if err != nil {
		return RolloutDetail{}, fmt.Errorf("reading failures: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	for rows.Next() {
		var (
			f  Failure
			rb int
			at int64
		)

		if err := rows.Scan(&f.Cluster, &f.Node, &f.Site, &f.Wave, &f.Error, &rb, &at); err != nil {
			return RolloutDetail{}, fmt.Errorf("reading failure: %w", err)
		}

		f.RolledBack, f.At = rb != 0, time.Unix(0, at).UTC()
		d.Failures = append(d.Failures, f)
	}

	if err := rows.Err(); err != nil {
		return RolloutDetail{}, fmt.Errorf("reading failures: %w", err)
	}

	if st.WaitingForWindow > 0 {
		w, err := s.waitingSites(ctx, r.ID, st, now)
		if err != nil {
			return RolloutDetail{}, err
		}

		d.Waiting = w
	}

	return d, nil
}

// schedules caches each rollout's frozen site schedules: a live page
// recomputes the rollout every second, and decoding 1,000 sites' windows each
// time was most of that work.
func (s *Server) schedules(ctx context.Context, id string) (map[string]*window.Schedule, error) {
	if v, ok := s.schedCache.Load(id); ok {
		return v.(map[string]*window.Schedule), nil
	}

	m, err := schedules(ctx, s.opts.Store, id)
	if err != nil {
		return nil, err
	}

	s.schedCache.Store(id, m)

	return m, nil
}

func (s *Server) waitingSites(ctx context.Context, id string, st Status, now time.Time) ([]WaitingSite, error) {
	sch, err := s.schedules(ctx, id)
	if err != nil {
		return nil, err
	}

	rows, err := s.opts.Store.DB().QueryContext(ctx, `SELECT site, COUNT(*) FROM nodes WHERE rollout_id = ? AND wave = ? AND state = ? GROUP BY site`,
		id, currentWave(st.Result), store.NodePending)
	if err != nil {
		return nil, fmt.Errorf("counting waiting nodes: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	out := []WaitingSite{}

	for rows.Next() {
		var ws WaitingSite
		if err := rows.Scan(&ws.Site, &ws.Nodes); err != nil {
			return nil, fmt.Errorf("counting waiting nodes: %w", err)
		}

		if sc := sch[ws.Site]; sc != nil && !sc.Open(now) {
			ws.NextOpen = sc.NextOpen(now)
			out = append(out, ws)
		}
	}

	sort.Slice(out, func(i, j int) bool { return out[i].NextOpen.Before(out[j].NextOpen) })

	return out, rows.Err()
}

// idList turns the comma-separated audit ids of a node's rows ("1,5," or
// ",7") into a JSON array ("[1,5]").
func idList(ids string) string {
	parts := strings.Split(ids, ",")
	out := parts[:0]

	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}

	return "[" + strings.Join(out, ",") + "]"
}
