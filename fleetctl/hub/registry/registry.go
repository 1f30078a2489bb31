// Package registry is the hub's machine registry in fleetctl's store: which
// machines have enrolled (by SMBIOS UUID), from which site, at which tunnel
// address, what they report, what an operator decided about them, and their
// latest events and log lines. It also keeps the per-site join tokens.
//
// Every write is one SQL transaction that touches the rows of one machine
// (or one token) only, so a refused or failed enrollment can never lose
// another machine's record.
package registry

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Machine states.
const (
	// StatePending: the machine enrolled with a valid join token and is seen,
	// but no operator decided about it yet. It gets no configuration unless
	// the inventory lists its UUID.
	StatePending = "pending"
	// StateAccepted: an operator accepted it into a cluster with a role.
	StateAccepted = "accepted"
	// StateRejected: an operator rejected it; it may not enroll again.
	StateRejected = "rejected"
)

// Transports a machine's WireGuard link runs over.
const (
	TransportUDP  = "udp"
	TransportGRPC = "grpc"
)

// Limits of what the registry keeps per machine; older rows are pruned.
const (
	MaxEventsPerMachine = 200
	MaxLogsPerMachine   = 2000
)

// Sentinel errors callers branch on (the hub maps them to gRPC codes).
var (
	ErrNotFound      = errors.New("not found")
	ErrTokenUnknown  = errors.New("unknown join token")
	ErrTokenRevoked  = errors.New("join token revoked")
	ErrDuplicateUUID = errors.New("duplicate machine UUID")
	ErrRejected      = errors.New("machine rejected by an operator")
	ErrKeyInUse      = errors.New("WireGuard public key already in use")
)

// Registry reads and writes the hub tables of a fleetctl store.
type Registry struct {
	db  *sql.DB
	now func() time.Time
}

// New wraps an open fleetctl store database (store.Store.DB()); its schema
// must include migration 0010.
func New(db *sql.DB) *Registry {
	return &Registry{db: db, now: time.Now}
}

// Machine is one enrolled machine.
type Machine struct {
	UUID           string `json:"uuid"`
	Site           string `json:"site"`
	TokenID        string `json:"tokenID"`
	PublicKey      string `json:"publicKey"`
	TunnelAddress  string `json:"tunnelAddress"`
	VirtualAddress string `json:"virtualAddress,omitempty"`
	// Endpoint is where the hub last heard the node's WireGuard packets
	// from (UDP ip:port, or the virtual gRPC endpoint); a restarted hub
	// starts handshakes there.
	Endpoint       string    `json:"endpoint,omitempty"`
	Transport      string    `json:"transport"`
	FirstSeen      time.Time `json:"firstSeen"`
	LastSeen       time.Time `json:"lastSeen"`
	TalosVersion   string    `json:"talosVersion,omitempty"`
	ImageVersion   string    `json:"imageVersion,omitempty"`
	SecureBoot     string    `json:"secureBoot,omitempty"`
	DiskEncryption string    `json:"diskEncryption,omitempty"`
	State          string    `json:"state"`
	Cluster        string    `json:"cluster,omitempty"`
	Role           string    `json:"role,omitempty"`
	DecidedBy      string    `json:"decidedBy,omitempty"`
	DecidedAt      time.Time `json:"decidedAt,omitzero"`
	ConfigApplied  time.Time `json:"configAppliedAt,omitzero"`
	LastError      string    `json:"lastError,omitempty"`

	uniqueToken string
}

// Enrollment is what a machine presents to the provisioning API, after its
// join token was checked.
type Enrollment struct {
	UUID         string
	Site         string
	TokenID      string
	UniqueToken  string // Talos's per-machine unique token; tells a reboot from a UUID clash
	PublicKey    string
	TalosVersion string
	Transport    string
	// VirtualAddress is the machine's address on the gRPC tunnel (empty for UDP).
	VirtualAddress string
	// Endpoint is the node's WireGuard endpoint if known now (gRPC: its
	// virtual endpoint; UDP: learnt from its first packets).
	Endpoint string
}

// Enrolled is the result of an enrollment.
type Enrolled struct {
	Machine Machine
	// PreviousPublicKey is the key the machine had before, if it changed
	// (Talos makes a new WireGuard key on every boot): the hub drops that peer.
	PreviousPublicKey string
	// New is true on the machine's first enrollment.
	New bool
}

const machineCols = `uuid, site, token_id, unique_token, public_key, tunnel_address, virtual_address, endpoint, transport,
	first_seen, last_seen, talos_version, image_version, secure_boot, disk_encryption, state, cluster, role,
	decided_by, decided_at, config_applied_at, last_error`

type scanner interface{ Scan(dest ...any) error }

func scanMachine(s scanner) (Machine, error) {
	var (
		m                             Machine
		first, last, decided, applied int64
	)

	err := s.Scan(&m.UUID, &m.Site, &m.TokenID, &m.uniqueToken, &m.PublicKey, &m.TunnelAddress, &m.VirtualAddress,
		&m.Endpoint, &m.Transport, &first, &last, &m.TalosVersion, &m.ImageVersion, &m.SecureBoot, &m.DiskEncryption, &m.State,
		&m.Cluster, &m.Role, &m.DecidedBy, &decided, &applied, &m.LastError)
	if err != nil {
		return Machine{}, err
	}

	m.FirstSeen = fromNanos(first)
	m.LastSeen = fromNanos(last)
	m.DecidedAt = fromNanos(decided)
	m.ConfigApplied = fromNanos(applied)

	return m, nil
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}

	return time.Unix(0, n).UTC()
}

// Enroll records a machine's enrollment. A machine already known keeps its
// tunnel address (so inventories and drivers can rely on it); a new one
// gets an address from alloc, retried while it clashes with another
// machine's. It refuses, naming the UUID and the reason:
//   - a rejected machine (ErrRejected);
//   - a UUID already enrolled with a different unique token: two machines
//     with the same SMBIOS UUID (ErrDuplicateUUID). The first keeps its link;
//   - a WireGuard key another machine has (ErrKeyInUse).
func (r *Registry) Enroll(ctx context.Context, e Enrollment, alloc func() (netip.Addr, error)) (Enrolled, error) {
	var out Enrolled

	err := r.tx(ctx, func(tx *sql.Tx) error {
		now := r.now().UnixNano()

		// A key names exactly one peer: taking another machine's key would
		// move that machine's tunnel address to the newcomer.
		var owner string

		err := tx.QueryRowContext(ctx, `SELECT uuid FROM hub_machines WHERE public_key = ? AND uuid != ?`, e.PublicKey, e.UUID).Scan(&owner)

		switch {
		case err == nil:
			return fmt.Errorf("machine %s: %w by machine %s (a node presents its own key; the enrolled machine keeps its link)", e.UUID, ErrKeyInUse, owner)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("checking the key of machine %s: %w", e.UUID, err)
		}

		old, err := scanMachine(tx.QueryRowContext(ctx, `SELECT `+machineCols+` FROM hub_machines WHERE uuid = ?`, e.UUID))

		switch {
		case errors.Is(err, sql.ErrNoRows):
			for attempt := 0; ; attempt++ {
				addr, err := alloc()
				if err != nil {
					return fmt.Errorf("allocating a tunnel address: %w", err)
				}

				_, err = tx.ExecContext(ctx, `INSERT INTO hub_machines (uuid, site, token_id, unique_token, public_key,
					tunnel_address, virtual_address, endpoint, transport, first_seen, last_seen, talos_version, state)
					VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
					e.UUID, e.Site, e.TokenID, e.UniqueToken, e.PublicKey, addr.String(), e.VirtualAddress, e.Endpoint, e.Transport,
					now, now, e.TalosVersion, StatePending)
				if err == nil {
					break
				}

				if attempt < 8 && strings.Contains(err.Error(), "UNIQUE") {
					continue
				}

				return fmt.Errorf("recording machine %s: %w", e.UUID, err)
			}

			out.New = true
		case err != nil:
			return fmt.Errorf("reading machine %s: %w", e.UUID, err)
		default:
			if old.State == StateRejected {
				return fmt.Errorf("machine %s: %w (by %s)", e.UUID, ErrRejected, old.DecidedBy)
			}

			if old.uniqueToken != "" && e.UniqueToken != "" && old.uniqueToken != e.UniqueToken {
				return fmt.Errorf("machine %s: %w: already enrolled from site %s by another machine (different unique token); the enrolled machine keeps its link; give one of them a distinct SMBIOS UUID or remove the record with 'fleetctl machines reject'",
					e.UUID, ErrDuplicateUUID, old.Site)
			}

			uniq := old.uniqueToken
			if uniq == "" {
				uniq = e.UniqueToken
			}

			if _, err := tx.ExecContext(ctx, `UPDATE hub_machines SET site = ?, token_id = ?, unique_token = ?, public_key = ?,
				virtual_address = ?, endpoint = ?, transport = ?, last_seen = ?, talos_version = ? WHERE uuid = ?`,
				e.Site, e.TokenID, uniq, e.PublicKey, e.VirtualAddress, e.Endpoint, e.Transport, now, e.TalosVersion, e.UUID); err != nil {
				return fmt.Errorf("updating machine %s: %w", e.UUID, err)
			}

			if old.PublicKey != e.PublicKey {
				out.PreviousPublicKey = old.PublicKey
			}
		}

		m, err := scanMachine(tx.QueryRowContext(ctx, `SELECT `+machineCols+` FROM hub_machines WHERE uuid = ?`, e.UUID))
		if err != nil {
			return fmt.Errorf("reading machine %s: %w", e.UUID, err)
		}

		out.Machine = m

		return nil
	})

	return out, err
}

// Machine returns one machine by UUID.
func (r *Registry) Machine(ctx context.Context, uuid string) (Machine, error) {
	m, err := scanMachine(r.db.QueryRowContext(ctx, `SELECT `+machineCols+` FROM hub_machines WHERE uuid = ?`, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return Machine{}, fmt.Errorf("machine %s: %w (see 'fleetctl machines ls')", uuid, ErrNotFound)
	}

	if err != nil {
		return Machine{}, fmt.Errorf("reading machine %s: %w", uuid, err)
	}

	return m, nil
}

// MachineByAddress returns the machine with a tunnel (or gRPC virtual) address.
func (r *Registry) MachineByAddress(ctx context.Context, addr netip.Addr) (Machine, error) {
	a := addr.Unmap().String()

	m, err := scanMachine(r.db.QueryRowContext(ctx, `SELECT `+machineCols+` FROM hub_machines WHERE tunnel_address = ? OR virtual_address = ?`, a, a))
	if errors.Is(err, sql.ErrNoRows) {
		return Machine{}, fmt.Errorf("no machine has tunnel address %s: %w", a, ErrNotFound)
	}

	if err != nil {
		return Machine{}, fmt.Errorf("reading machine at %s: %w", a, err)
	}

	return m, nil
}

// Resolve finds a machine by UUID or by tunnel address (what operators type).
func (r *Registry) Resolve(ctx context.Context, node string) (Machine, error) {
	if addr, err := netip.ParseAddr(strings.Trim(node, "[]")); err == nil {
		return r.MachineByAddress(ctx, addr)
	}

	return r.Machine(ctx, node)
}

// Machines lists every machine, ordered by site then UUID.
func (r *Registry) Machines(ctx context.Context) ([]Machine, error) {
	rows, err := r.db.QueryContext(ctx, `SELECT `+machineCols+` FROM hub_machines ORDER BY site, uuid`)
	if err != nil {
		return nil, fmt.Errorf("listing machines: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	var out []Machine

	for rows.Next() {
		m, err := scanMachine(rows)
		if err != nil {
			return nil, fmt.Errorf("listing machines: %w", err)
		}

		out = append(out, m)
	}

	return out, rows.Err()
}

// Seen records that a machine was heard from (a handshake) and from where
// (empty endpoint: unchanged).
func (r *Registry) Seen(ctx context.Context, uuid string, at time.Time, endpoint string) error {
	_, err := r.db.ExecContext(ctx, `UPDATE hub_machines SET last_seen = max(last_seen, ?),
		endpoint = CASE WHEN ? = '' THEN endpoint ELSE ? END WHERE uuid = ?`, at.UnixNano(), endpoint, endpoint, uuid)
	if err != nil {
		return fmt.Errorf("recording last seen of %s: %w", uuid, err)
	}

	return nil
}

// Report is what a machine says about itself; empty fields are left as they were.
type Report struct {
	ImageVersion   string
	SecureBoot     string
	DiskEncryption string
}

// SetReport records what a machine reported about itself.
func (r *Registry) SetReport(ctx context.Context, uuid string, rep Report) error {
	_, err := r.db.ExecContext(ctx, `UPDATE hub_machines SET
		image_version = CASE WHEN ? = '' THEN image_version ELSE ? END,
		secure_boot = CASE WHEN ? = '' THEN secure_boot ELSE ? END,
		disk_encryption = CASE WHEN ? = '' THEN disk_encryption ELSE ? END
		WHERE uuid = ?`,
		rep.ImageVersion, rep.ImageVersion, rep.SecureBoot, rep.SecureBoot, rep.DiskEncryption, rep.DiskEncryption, uuid)
	if err != nil {
		return fmt.Errorf("recording the report of %s: %w", uuid, err)
	}

	return nil
}

// Decide records an operator's decision: StateAccepted (with cluster and
// role) or StateRejected.
func (r *Registry) Decide(ctx context.Context, uuid, state, cluster, role, actor string) (Machine, error) {
	switch state {
	case StateAccepted:
		if cluster == "" || role == "" {
			return Machine{}, fmt.Errorf("accepting machine %s: --cluster and --role are required", uuid)
		}
	case StateRejected:
		cluster, role = "", ""
	default:
		return Machine{}, fmt.Errorf("deciding about machine %s: unknown state %q", uuid, state)
	}

	res, err := r.db.ExecContext(ctx, `UPDATE hub_machines SET state = ?, cluster = ?, role = ?, decided_by = ?, decided_at = ? WHERE uuid = ?`,
		state, cluster, role, actor, r.now().UnixNano(), uuid)
	if err != nil {
		return Machine{}, fmt.Errorf("recording decision on %s: %w", uuid, err)
	}

	if n, _ := res.RowsAffected(); n == 0 {
		return Machine{}, fmt.Errorf("machine %s: %w (it must enroll first; see 'fleetctl machines ls')", uuid, ErrNotFound)
	}

	return r.Machine(ctx, uuid)
}

// ConfigResult records the outcome of handing a machine its configuration:
// applyErr nil marks it applied.
func (r *Registry) ConfigResult(ctx context.Context, uuid string, applyErr error) error {
	var err error
	if applyErr == nil {
		_, err = r.db.ExecContext(ctx, `UPDATE hub_machines SET config_applied_at = ?, last_error = '' WHERE uuid = ?`, r.now().UnixNano(), uuid)
	} else {
		_, err = r.db.ExecContext(ctx, `UPDATE hub_machines SET last_error = ? WHERE uuid = ?`, applyErr.Error(), uuid)
	}

	if err != nil {
		return fmt.Errorf("recording config result of %s: %w", uuid, err)
	}

	return nil
}

// Event is one event a machine sent to the event sink.
type Event struct {
	ID      int64     `json:"-"`
	UUID    string    `json:"uuid"`
	At      time.Time `json:"at"`
	Type    string    `json:"type"`
	EventID string    `json:"id,omitempty"`
	Payload string    `json:"payload"` // protojson of the event
}

// AddEvents stores events and prunes each machine's to MaxEventsPerMachine.
func (r *Registry) AddEvents(ctx context.Context, evs []Event) error {
	if len(evs) == 0 {
		return nil
	}

	return r.tx(ctx, func(tx *sql.Tx) error {
		touched := map[string]int64{}

		for _, e := range evs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO hub_events (uuid, at, type, event_id, payload) VALUES (?,?,?,?,?)`,
				e.UUID, e.At.UnixNano(), e.Type, e.EventID, e.Payload); err != nil {
				return fmt.Errorf("storing event of %s: %w", e.UUID, err)
			}

			touched[e.UUID] = max(touched[e.UUID], e.At.UnixNano())
		}

		for uuid, at := range touched {
			if err := prune(ctx, tx, "hub_events", uuid, MaxEventsPerMachine); err != nil {
				return err
			}

			if _, err := tx.ExecContext(ctx, `UPDATE hub_machines SET last_seen = max(last_seen, ?) WHERE uuid = ?`, at, uuid); err != nil {
				return fmt.Errorf("recording last seen of %s: %w", uuid, err)
			}
		}

		return nil
	})
}

// Events returns a machine's latest events, oldest first (limit <= 0: all kept).
func (r *Registry) Events(ctx context.Context, uuid string, limit int) ([]Event, error) {
	if limit <= 0 {
		limit = MaxEventsPerMachine
	}

	rows, err := r.db.QueryContext(ctx, `SELECT id, uuid, at, type, event_id, payload FROM
		(SELECT * FROM hub_events WHERE uuid = ? ORDER BY id DESC LIMIT ?) ORDER BY id`, uuid, limit)
	if err != nil {
		return nil, fmt.Errorf("reading events of %s: %w", uuid, err)
	}
	defer rows.Close() //nolint:errcheck

	var out []Event

	for rows.Next() {
		var (
			e  Event
			at int64
		)

		if err := rows.Scan(&e.ID, &e.UUID, &at, &e.Type, &e.EventID, &e.Payload); err != nil {
			return nil, fmt.Errorf("reading events of %s: %w", uuid, err)
		}

		e.At = fromNanos(at)
		out = append(out, e)
	}

	return out, rows.Err()
}

// LogLine is one line a machine sent to the log receiver.
type LogLine struct {
	ID   int64     `json:"id"`
	UUID string    `json:"uuid"`
	At   time.Time `json:"at"`
	Line string    `json:"line"` // the JSON message as received
}

// AddLogs stores log lines and prunes each machine's to MaxLogsPerMachine.
func (r *Registry) AddLogs(ctx context.Context, lines []LogLine) error {
	if len(lines) == 0 {
		return nil
	}

	return r.tx(ctx, func(tx *sql.Tx) error {
		touched := map[string]int64{}

		for _, l := range lines {
			if _, err := tx.ExecContext(ctx, `INSERT INTO hub_logs (uuid, at, line) VALUES (?,?,?)`, l.UUID, l.At.UnixNano(), l.Line); err != nil {
				return fmt.Errorf("storing log line of %s: %w", l.UUID, err)
			}

			touched[l.UUID] = max(touched[l.UUID], l.At.UnixNano())
		}

		for uuid, at := range touched {
			if err := prune(ctx, tx, "hub_logs", uuid, MaxLogsPerMachine); err != nil {
				return err
			}

			if _, err := tx.ExecContext(ctx, `UPDATE hub_machines SET last_seen = max(last_seen, ?) WHERE uuid = ?`, at, uuid); err != nil {
				return fmt.Errorf("recording last seen of %s: %w", uuid, err)
			}
		}

		return nil
	})
}

// Logs returns a machine's log lines with id > after, oldest first; with
// after == 0 only the last tail lines (tail <= 0: all kept).
func (r *Registry) Logs(ctx context.Context, uuid string, after int64, tail int) ([]LogLine, error) {
	if tail <= 0 {
		tail = MaxLogsPerMachine
	}

	rows, err := r.db.QueryContext(ctx, `SELECT id, uuid, at, line FROM
		(SELECT * FROM hub_logs WHERE uuid = ? AND id > ? ORDER BY id DESC LIMIT ?) ORDER BY id`, uuid, after, tail)
	if err != nil {
		return nil, fmt.Errorf("reading logs of %s: %w", uuid, err)
	}
	defer rows.Close() //nolint:errcheck

	var out []LogLine

	for rows.Next() {
		var (
			l  LogLine
			at int64
		)

		if err := rows.Scan(&l.ID, &l.UUID, &at, &l.Line); err != nil {
			return nil, fmt.Errorf("reading logs of %s: %w", uuid, err)
		}

		l.At = fromNanos(at)
		out = append(out, l)
	}

	return out, rows.Err()
}

func prune(ctx context.Context, tx *sql.Tx, table, uuid string, keep int) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE uuid = ? AND id <= (SELECT id FROM `+table+` WHERE uuid = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`,
		uuid, uuid, keep)
	if err != nil {
		return fmt.Errorf("pruning %s of %s: %w", table, uuid, err)
	}

	return nil
}

// HubKey returns the hub's stored WireGuard private key (base64), creating
// it with gen on first use. Keeping the key is what lets nodes reconnect to
// a restarted hub without enrolling again.
func (r *Registry) HubKey(ctx context.Context, gen func() (string, error)) (string, error) {
	var key string

	err := r.tx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `SELECT private_key FROM hub_keys WHERE name = 'wireguard'`).Scan(&key)
		if err == nil {
			return nil
		}

		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("reading hub key: %w", err)
		}

		key, err = gen()
		if err != nil {
			return fmt.Errorf("generating hub key: %w", err)
		}

		if _, err := tx.ExecContext(ctx, `INSERT INTO hub_keys (name, private_key, created_at) VALUES ('wireguard', ?, ?)`, key, r.now().UnixNano()); err != nil {
			return fmt.Errorf("storing hub key: %w", err)
		}

		return nil
	})

	return key, err
}

func (r *Registry) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}

	if err := fn(tx); err != nil {
		tx.Rollback() //nolint:errcheck

		return err
	}

	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}

	return nil
}

func randomID(n int) string {
	const alphabet = "abcdefghijkmnpqrstuvwxyz23456789"

	b := make([]byte, n)
	_, _ = rand.Read(b)

	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}

	return string(b)
}

// NodeEndpoint is where fleetctl's driver reaches an enrolled machine's API:
// host:port on its tunnel address (routed through the hub's TUN device, so
// from the hub's host). It refuses a rejected machine.
func (r *Registry) NodeEndpoint(ctx context.Context, uuid string, port int) (string, error) {
	m, err := r.Machine(ctx, uuid)
	if err != nil {
		return "", err
	}

	if m.State == StateRejected {
		return "", fmt.Errorf("machine %s: %w (by %s)", uuid, ErrRejected, m.DecidedBy)
	}

	return net.JoinHostPort(m.TunnelAddress, strconv.Itoa(port)), nil
}
