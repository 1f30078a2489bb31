package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Rollout is one row of the rollouts table.
type Rollout struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Image     string    `json:"image"`
	Version   string    `json:"version"`
	Plan      string    `json:"-"` // the plan as JSON, frozen at start
	Driver    string    `json:"driver"`
	State     string    `json:"state"`
	Desired   string    `json:"desired"`
	Reason    string    `json:"reason,omitempty"`
	CreatedBy string    `json:"createdBy"`
	CreatedAt time.Time `json:"createdAt"`
	UpdatedAt time.Time `json:"updatedAt"`
	StartedAt time.Time `json:"startedAt"`
	LeaseHost string    `json:"leaseHost,omitempty"`
	LeasePID  int       `json:"leasePid,omitempty"`
	LeaseAt   time.Time `json:"leaseAt"`
}

// Site is a site's schedule frozen at rollout start.
type Site struct {
	Name     string
	TimeZone string
	Windows  string // JSON list of window.Window
}

// Wave is one row of the waves table.
type Wave struct {
	Index       int       `json:"index"`
	Name        string    `json:"name"`
	State       string    `json:"state"`
	Clusters    int       `json:"clusters"`
	Nodes       int       `json:"nodes"`
	MaxFailures int       `json:"maxFailures"`
	Concurrency int       `json:"concurrency"`
	StartedAt   time.Time `json:"startedAt"`
	FinishedAt  time.Time `json:"finishedAt"`
}

// Node is one row of the nodes table: the node as frozen at rollout start plus its progress.
type Node struct {
	ID          int    `json:"id"`
	Wave        int    `json:"wave"`
	Cluster     string `json:"cluster"`
	Name        string `json:"name"`
	Endpoint    string `json:"endpoint"`
	Role        string `json:"role"`
	Site        string `json:"site"`
	Region      string `json:"region"`
	Bandwidth   string `json:"bandwidth"`
	Talosconfig string `json:"talosconfig,omitempty"`
	State       string `json:"state"`
	FromVersion string `json:"fromVersion,omitempty"`
	Error       string `json:"error,omitempty"`
	RolledBack  bool   `json:"rolledBack,omitempty"`
	// UpgradeCalls counts Upgrade requests this fleetctl sent (a resumed
	// request whose first attempt may not have reached the node counts again).
	UpgradeCalls int       `json:"upgradeCalls"`
	UpdatedAt    time.Time `json:"updatedAt"`
}

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	ID      int64     `json:"id"`
	At      time.Time `json:"at"`
	Actor   string    `json:"actor"`
	Rollout string    `json:"rollout"`
	Action  string    `json:"action"`
	Subject string    `json:"subject"`
	Detail  string    `json:"detail,omitempty"`
}

func t(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}

	return time.Unix(0, ns).UTC()
}

// CreateRollout writes a new rollout with its frozen sites, waves and nodes in one transaction.
// It refuses when another rollout is still running or paused.
func (s *Store) CreateRollout(ctx context.Context, r Rollout, sites []Site, waves []Wave, nodes []Node, actor string) error {
	return s.write(ctx, func(tx *wtx) error {
		var active string

		err := tx.QueryRow(`SELECT id FROM rollouts WHERE state IN (?, ?) LIMIT 1`, StateRunning, StatePaused).Scan(&active)
		if err == nil {
			return fmt.Errorf("rollout %s is still active (resume or abort it first)", active)
		}

		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("looking for active rollouts: %w", err)
		}

		at := now()

		if _, err := tx.Exec(`INSERT INTO rollouts (id, name, image, version, plan, driver, state, desired, created_by, created_at, updated_at)
			VALUES (?,?,?,?,?,?,?,?,?,?,?)`, r.ID, r.Name, r.Image, r.Version, r.Plan, r.Driver, StateRunning, DesiredRun, actor, at, at); err != nil {
			return fmt.Errorf("writing rollout: %w", err)
		}

		for _, st := range sites {
			if _, err := tx.Exec(`INSERT INTO sites (rollout_id, name, timezone, windows) VALUES (?,?,?,?)`,
				r.ID, st.Name, st.TimeZone, st.Windows); err != nil {
				return fmt.Errorf("writing site: %w", err)
			}
		}

		for _, w := range waves {
			if _, err := tx.Exec(`INSERT INTO waves (rollout_id, idx, name, state, clusters, nodes, max_failures, concurrency)
				VALUES (?,?,?,?,?,?,?,?)`, r.ID, w.Index, w.Name, WavePending, w.Clusters, w.Nodes, w.MaxFailures, w.Concurrency); err != nil {
				return fmt.Errorf("writing wave: %w", err)
			}
		}

		// Several nodes per statement (as writeNodeRecords does): at 30,000
		// nodes one INSERT each was a tenth of a rollout's store time. The
		// rollout id is bound once per statement (?1) and the state is a
		// literal: every text parameter is a copy into C memory.
		rid := driver.Value(r.ID)

		for rest := nodes; len(rest) > 0; {
			n := 1

			for _, c := range createChunks {
				if c <= len(rest) {
					n = c

					break
				}
			}

			args := tx.nodeNV[:0]
			args = append(args, driver.NamedValue{Ordinal: 1, Value: rid})

			for _, nd := range rest[:n] {
				for _, v := range [...]driver.Value{int64(nd.ID), int64(nd.Wave), nd.Cluster, nd.Name, nd.Endpoint, nd.Role, nd.Site, nd.Region, nd.Bandwidth, nd.Talosconfig} {
					args = append(args, driver.NamedValue{Ordinal: len(args) + 1, Value: v})
				}
			}

			_, err := tx.execNV(insertNodesSQL[n], args)

			clear(args)
			tx.nodeNV = args[:0]

			if err != nil {
				return fmt.Errorf("writing nodes %s/%s...: %w", rest[0].Cluster, rest[0].Name, err)
			}

			rest = rest[n:]
		}

		return audit(tx, at, actor, r.ID, "rollout.create", r.Name,
			fmt.Sprintf("image=%s version=%s waves=%d nodes=%d", r.Image, r.Version, len(waves), len(nodes)))
	})
}

const rolloutCols = `id, name, image, version, plan, driver, state, desired, reason, created_by, created_at, updated_at, started_at, lease_host, lease_pid, lease_at`

func scanRollout(sc interface{ Scan(...any) error }) (*Rollout, error) {
	var (
		r                           Rollout
		created, updated, start, la int64
	)

	if err := sc.Scan(&r.ID, &r.Name, &r.Image, &r.Version, &r.Plan, &r.Driver, &r.State, &r.Desired, &r.Reason, &r.CreatedBy,
		&created, &updated, &start, &r.LeaseHost, &r.LeasePID, &la); err != nil {
		return nil, err
	}

	r.CreatedAt, r.UpdatedAt, r.StartedAt, r.LeaseAt = t(created), t(updated), t(start), t(la)

	return &r, nil
}

// Rollout reads one rollout; an empty id means the most recent one.
func (s *Store) Rollout(ctx context.Context, id string) (*Rollout, error) {
	var row *sql.Row
	if id == "" {
		row = s.db.QueryRowContext(ctx, `SELECT `+rolloutCols+` FROM rollouts ORDER BY created_at DESC LIMIT 1`)
	} else {
		row = s.db.QueryRowContext(ctx, `SELECT `+rolloutCols+` FROM rollouts WHERE id = ?`, id)
	}

	r, err := scanRollout(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}

	if err != nil {
		return nil, fmt.Errorf("reading rollout: %w", err)
	}

	return r, nil
}

// Rollouts lists all rollouts, newest first.
func (s *Store) Rollouts(ctx context.Context) ([]Rollout, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+rolloutCols+` FROM rollouts ORDER BY created_at DESC`)
	if err != nil {
		return nil, fmt.Errorf("listing rollouts: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	var out []Rollout

	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			return nil, fmt.Errorf("reading rollout: %w", err)
		}

		out = append(out, *r)
	}

	return out, rows.Err()
}

// Desired reads what operators asked for; cheap enough to poll.
func (s *Store) Desired(ctx context.Context, id string) (string, error) {
	var d string
	if err := s.db.QueryRowContext(ctx, `SELECT desired FROM rollouts WHERE id = ?`, id).Scan(&d); err != nil {
		return "", fmt.Errorf("reading desired state: %w", err)
	}

	return d, nil
}

// SetDesired records an operator's request (pause, abort, run) and audits it.
func (s *Store) SetDesired(ctx context.Context, id, desired, actor string) error {
	return s.write(ctx, setDesired(id, desired, actor))
}

func setDesired(id, desired, actor string) func(*wtx) error {
	return func(tx *wtx) error {
		res, err := tx.Exec(`UPDATE rollouts SET desired = ?, updated_at = ? WHERE id = ?`, desired, now(), id)
		if err != nil {
			return fmt.Errorf("updating desired state: %w", err)
		}

		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}

		return audit(tx, now(), actor, id, "rollout."+desired, id, "")
	}
}

// SetState records the rollout's state (and why).
func (s *Store) SetState(ctx context.Context, id, state, reason, actor string) error {
	return s.write(ctx, setState(id, state, reason, actor))
}

func setState(id, state, reason, actor string) func(*wtx) error {
	return func(tx *wtx) error {
		if _, err := tx.Exec(`UPDATE rollouts SET state = ?, reason = ?, updated_at = ? WHERE id = ?`, state, reason, now(), id); err != nil {
			return fmt.Errorf("updating rollout state: %w", err)
		}

		return audit(tx, now(), actor, id, "rollout.state", state, reason)
	}
}

// Sites reads the frozen site schedules.
func (s *Store) Sites(ctx context.Context, id string) ([]Site, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, timezone, windows FROM sites WHERE rollout_id = ? ORDER BY name`, id)
	if err != nil {
		return nil, fmt.Errorf("reading sites: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	var out []Site

	for rows.Next() {
		var st Site
		if err := rows.Scan(&st.Name, &st.TimeZone, &st.Windows); err != nil {
			return nil, fmt.Errorf("reading site: %w", err)
		}

		out = append(out, st)
	}

	return out, rows.Err()
}

// Waves reads the waves in order.
func (s *Store) Waves(ctx context.Context, id string) ([]Wave, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT idx, name, state, clusters, nodes, max_failures, concurrency, started_at, finished_at
		FROM waves WHERE rollout_id = ? ORDER BY idx`, id)
	if err != nil {
		return nil, fmt.Errorf("reading waves: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	var out []Wave

	for rows.Next() {
		var (
			w      Wave
			st, fi int64
		)

		if err := rows.Scan(&w.Index, &w.Name, &w.State, &w.Clusters, &w.Nodes, &w.MaxFailures, &w.Concurrency, &st, &fi); err != nil {
			return nil, fmt.Errorf("reading wave: %w", err)
		}

		w.StartedAt, w.FinishedAt = t(st), t(fi)
		out = append(out, w)
	}

	return out, rows.Err()
}

// SetWaveState records a wave starting or finishing.
func (s *Store) SetWaveState(ctx context.Context, id string, idx int, state, actor string) error {
	return s.write(ctx, setWaveState(id, idx, state, actor))
}

func setWaveState(id string, idx int, state, actor string) func(*wtx) error {
	return func(tx *wtx) error {
		at := now()

		var q string

		switch state {
		case WaveRunning:
			q = `UPDATE waves SET state = ?, started_at = CASE WHEN started_at = 0 THEN ? ELSE started_at END WHERE rollout_id = ? AND idx = ?`
		default:
			q = `UPDATE waves SET state = ?, finished_at = ? WHERE rollout_id = ? AND idx = ?`
		}

		if _, err := tx.Exec(q, state, at, id, idx); err != nil {
			return fmt.Errorf("updating wave: %w", err)
		}

		return audit(tx, at, actor, id, "wave."+state, fmt.Sprintf("wave %d", idx), "")
	}
}

// Nodes reads every node of the rollout ordered by id.
func (s *Store) Nodes(ctx context.Context, id string) ([]Node, error) {
	// Sized up front: growing by appends would briefly hold two copies
	// (a 300,000-node slice is about 60 MB).
	var count int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM nodes WHERE rollout_id = ?`, id).Scan(&count); err != nil {
		return nil, fmt.Errorf("counting nodes: %w", err)
	}

	rows, err := s.db.QueryContext(ctx, `SELECT id, wave, cluster, name, endpoint, role, site, region, bandwidth, talosconfig,
		state, from_version, error, rolled_back, upgrade_calls, updated_at FROM nodes WHERE rollout_id = ? ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("reading nodes: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	out := make([]Node, 0, count)

	// Most columns repeat across nodes (role, site, talosconfig, state, a
	// cluster's name for each of its nodes): one copy of each value keeps
	// 300,000 loaded nodes tens of MB smaller for the whole run.
	seen := map[string]string{}
	intern := func(p *string) {
		if v, ok := seen[*p]; ok {
			*p = v
		} else {
			seen[*p] = *p
		}
	}

	for rows.Next() {
		var (
			n  Node
			rb int
			up int64
		)

		if err := rows.Scan(&n.ID, &n.Wave, &n.Cluster, &n.Name, &n.Endpoint, &n.Role, &n.Site, &n.Region, &n.Bandwidth,
			&n.Talosconfig, &n.State, &n.FromVersion, &n.Error, &rb, &n.UpgradeCalls, &up); err != nil {
			return nil, fmt.Errorf("reading node: %w", err)
		}

		for _, p := range []*string{&n.Cluster, &n.Name, &n.Role, &n.Site, &n.Region, &n.Bandwidth, &n.Talosconfig, &n.State, &n.FromVersion, &n.Error} {
			intern(p)
		}

		n.RolledBack, n.UpdatedAt = rb != 0, t(up)
		out = append(out, n)
	}

	return out, rows.Err()
}

// Transition is one node state change.
type Transition struct {
	Node        int    // node id
	Subject     string // cluster/node, for the audit log
	State       string // new state
	FromVersion string // recorded when the state is NodeRequested
	Error       string
	RolledBack  bool
	UpgradeCall bool   // count an Upgrade request
	Detail      string // audit detail
}

// RecordNode commits a node transition with its audit line. It returns only
// once the change is durable, so callers may then act on the node.
func (s *Store) RecordNode(ctx context.Context, rollout, actor string, tr Transition) error {
	return s.enqueue(ctx, op{rec: &nodeRecord{rollout: rollout, actor: actor, tr: tr}})
}

// nodeRecord is one queued node transition.
type nodeRecord struct {
	rollout, actor string
	tr             Transition
	at             int64
}

// recordChunks are the row counts of the multi-row statements
// writeNodeRecords uses, largest first; any count is a sum of them, and
// each size is one cached prepared statement.
var recordChunks = []int{64, 16, 4, 1}

// writeNodeRecords writes node transitions and their audit lines, several
// per statement. A transition per node and an audit row per transition, as
// before; only the statements are shared: one UPDATE and one INSERT per
// chunk instead of one each per transition, which was most of the
// writer's CPU time (about 8 µs of statement overhead each).
func writeNodeRecords(tx *wtx, recs []*nodeRecord) error {
	for len(recs) > 0 {
		n := 1

		for _, c := range recordChunks {
			if c <= len(recs) {
				n = c

				break
			}
		}

		// UPDATE ... FROM needs each node once per statement.
		seen := make(map[int]bool, n)
		for i := 0; i < n; i++ {
			if seen[recs[i].tr.Node] {
				n = i

				break
			}

			seen[recs[i].tr.Node] = true
		}

		for _, c := range recordChunks {
			if c <= n {
				n = c

				break
			}
		}

		if err := writeNodeChunk(tx, recs[:n]); err != nil {
			return err
		}

		recs = recs[n:]
	}

	return nil
}

var (
	updateNodesSQL = map[int]string{}
	insertAuditSQL = map[int]string{}
	insertNodesSQL = map[int]string{}

	// The same statements for a chunk whose transitions all have one
	// rollout and one actor (nearly always): those are bound once, as ?1
	// and ?2, instead of once per row. Every text parameter costs the
	// driver a copy into C memory and a free. The plain ? after them are
	// numbered on from the largest number used so far (SQLite's rule).
	updateNodesSharedSQL = map[int]string{}
	insertAuditSharedSQL = map[int]string{}
)

// createChunks are CreateRollout's node rows per INSERT, largest first.
var createChunks = []int{256, 64, 16, 4, 1}

func init() {
	for _, n := range createChunks {
		// [rollout, then per row id, wave, cluster, name, endpoint, role,
		// site, region, bandwidth, talosconfig]; every node starts pending.
		insertNodesSQL[n] = `INSERT INTO nodes (rollout_id, id, wave, cluster, name, endpoint, role, site, region, bandwidth, talosconfig, state) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?1,?,?,?,?,?,?,?,?,?,?,'"+NodePending+"'),", n), ",")
	}

	for _, n := range recordChunks {
		rows := strings.TrimSuffix(strings.Repeat("(?,?,?,?,?,?,?,?,?),", n), ",")
		updateNodesSQL[n] = `WITH v(r, id, st, fv, er, rb, ca, at, aid) AS (VALUES ` + rows + `)
			UPDATE nodes SET state = v.st, from_version = CASE WHEN v.fv = '' THEN nodes.from_version ELSE v.fv END,
			error = v.er, rolled_back = MAX(nodes.rolled_back, v.rb), upgrade_calls = nodes.upgrade_calls + v.ca, updated_at = v.at,
			audit_ids = CASE WHEN nodes.audit_ids = '' THEN v.aid ELSE nodes.audit_ids || ',' || v.aid END
			FROM v WHERE nodes.rollout_id = v.r AND nodes.id = v.id`
		insertAuditSQL[n] = `INSERT INTO audit (id, at, actor, rollout_id, action, subject, detail) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?,?,?,?,?,?,?),", n), ",")

		// Update: [rollout, then per row id, st, fv, er, rb, ca, at, aid].
		updateNodesSharedSQL[n] = strings.ReplaceAll(updateNodesSQL[n], "(?,?,?,?,?,?,?,?,?)", "(?1,?,?,?,?,?,?,?,?)")
		// Audit: [actor, rollout, then per row id, at, action, subject, detail];
		// the first row numbers its leading ids explicitly so that the
		// plain ? after ?1 and ?2 continue at 5.
		insertAuditSharedSQL[n] = `INSERT INTO audit (id, at, actor, rollout_id, action, subject, detail) VALUES (?3,?4,?1,?2,?,?,?)` +
			strings.Repeat(",(?,?,?1,?2,?,?,?)", n-1)
	}
}

// stateValues returns a node state and its audit action ("node.<state>")
// as driver values, made once per state and writer.
func (t *wtx) stateValues(state string) (driver.Value, driver.Value) {
	if v, ok := t.states[state]; ok {
		return v[0], v[1]
	}

	v := [2]driver.Value{state, "node." + state}
	if len(t.states) < 64 { // a handful of states; never grows without bound
		t.states[state] = v
	}

	return v[0], v[1]
}

func writeNodeChunk(tx *wtx, recs []*nodeRecord) error {
	// Arguments go straight to the driver, in buffers reused by every chunk.
	nodeArgs := tx.nodeNV[:0]
	auditArgs := tx.auditNV[:0]

	shared := true
	for _, rec := range recs[1:] {
		if rec.rollout != recs[0].rollout || rec.actor != recs[0].actor {
			shared = false

			break
		}
	}

	add := func(args []driver.NamedValue, vs ...driver.Value) []driver.NamedValue {
		for _, v := range vs {
			args = append(args, driver.NamedValue{Ordinal: len(args) + 1, Value: v})
		}

		return args
	}

	first, err := tx.auditIDs(len(recs))
	if err != nil {
		return err
	}

	for i, rec := range recs {
		tr := rec.tr
		at := now()

		rb, calls := int64(0), int64(0)
		if tr.RolledBack {
			rb = 1
		}

		if tr.UpgradeCall {
			calls = 1
		}

		detail := tr.Detail
		if tr.Error != "" {
			detail += " error=" + tr.Error
		}

		// The node row lists the id of its audit line (the fleet
		// overview's node history reads them by id). Bound as an integer:
		// the column's TEXT affinity and || store the same text as a
		// string would, without a text parameter's copy into C memory.
		//
		// Values used twice are made driver values once (each conversion
		// of a string or a large integer to an interface allocates).
		aid, atV := driver.Value(first+int64(i)), driver.Value(at)
		state, action := tx.stateValues(tr.State)

		if shared {
			if i == 0 {
				nodeArgs = add(nodeArgs, rec.rollout)
				auditArgs = add(auditArgs, rec.actor, rec.rollout)
			}

			nodeArgs = add(nodeArgs, int64(tr.Node), state, tr.FromVersion, tr.Error, rb, calls, atV, aid)
			auditArgs = add(auditArgs, aid, atV, action, tr.Subject, detail)

			continue
		}

		nodeArgs = add(nodeArgs, rec.rollout, int64(tr.Node), state, tr.FromVersion, tr.Error, rb, calls, atV, aid)
		auditArgs = add(auditArgs, aid, atV, rec.actor, rec.rollout, action, tr.Subject, detail)
	}

	updateSQL, auditSQL := updateNodesSQL[len(recs)], insertAuditSQL[len(recs)]
	if shared {
		updateSQL, auditSQL = updateNodesSharedSQL[len(recs)], insertAuditSharedSQL[len(recs)]
	}

	// Kept for the next chunk, values cleared so they hold no strings alive.
	defer func() {
		clear(nodeArgs)
		clear(auditArgs)
		tx.nodeNV, tx.auditNV = nodeArgs[:0], auditArgs[:0]
	}()

	if _, err := tx.execNV(updateSQL, nodeArgs); err != nil {
		return fmt.Errorf("recording node %s: %w", recs[0].tr.Subject, err)
	}

	if _, err := tx.execNV(auditSQL, auditArgs); err != nil {
		return fmt.Errorf("writing audit log: %w", err)
	}

	return nil
}

// Audit reads the audit log of a rollout (all rollouts if id is empty), oldest
// first; limit > 0 keeps the last limit entries.
func (s *Store) Audit(ctx context.Context, id string, limit int) ([]AuditEntry, error) {
	q := `SELECT id, at, actor, rollout_id, action, subject, detail FROM audit`
	args := []any{}

	if id != "" {
		q += ` WHERE rollout_id = ?`

		args = append(args, id)
	}

	q += ` ORDER BY id DESC`
	if limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, limit)
	}

	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading audit log: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	var out []AuditEntry

	for rows.Next() {
		var (
			e  AuditEntry
			at int64
		)

		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Rollout, &e.Action, &e.Subject, &e.Detail); err != nil {
			return nil, fmt.Errorf("reading audit entry: %w", err)
		}

		e.At = t(at)
		out = append(out, e)
	}

	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}

	return out, rows.Err()
}

// Counts is the number of nodes per state, per wave.
type Counts map[int]map[string]int

// NodeCounts aggregates node states per wave.
func (s *Store) NodeCounts(ctx context.Context, id string) (Counts, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT wave, state, COUNT(*) FROM nodes WHERE rollout_id = ? GROUP BY wave, state`, id)
	if err != nil {
		return nil, fmt.Errorf("counting nodes: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	out := Counts{}

	for rows.Next() {
		var (
			w, n  int
			state string
		)

		if err := rows.Scan(&w, &state, &n); err != nil {
			return nil, fmt.Errorf("counting nodes: %w", err)
		}

		if out[w] == nil {
			out[w] = map[string]int{}
		}

		out[w][state] = n
	}

	return out, rows.Err()
}
