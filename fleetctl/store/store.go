// Package store keeps every rollout step in an embedded SQLite database
// (modernc.org/sqlite, no cgo). Node transitions are written in a transaction
// before the node is touched and again after, so a process killed at any
// moment leaves a record of which nodes may have been asked to change.
//
// Writes from the engine's many workers go through one writer goroutine
// that commits whatever is queued in a single transaction (group commit):
// each caller still returns only after its own change is committed, but
// thousands of concurrent node updates cost a few hundred commits.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/user"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Rollout states.
const (
	StateRunning   = "running"   // an engine is (or was, before a crash) executing it
	StatePaused    = "paused"    // stopped on request; resume continues
	StateHalted    = "halted"    // a failure budget was spent
	StateAborted   = "aborted"   // stopped on request for good
	StateCompleted = "completed" // every wave finished
)

// Desired states an operator can ask for (from any process).
const (
	DesiredRun   = "run"
	DesiredPause = "pause"
	DesiredAbort = "abort"
)

// Node states.
const (
	NodePending   = "pending"   // not touched yet
	NodeRequested = "requested" // about to call Upgrade (the call may or may not have reached the node)
	NodeAccepted  = "accepted"  // the node accepted the upgrade; health gate running
	// NodeRollingBack is written before a rollback call: the node was seen
	// running the target image and is about to be asked to boot its previous
	// one. Resume never sends that call again (on Talos a second rollback
	// boots the failed image again); it asks the node which image it runs.
	NodeRollingBack = "rolling-back"
	NodeDone        = "done"    // passed its health gate (or already ran the target version)
	NodeFailed      = "failed"  // failed; rolled back if the plan says so
	NodeSkipped     = "skipped" // not upgraded because another node of its cluster failed
)

// Wave states.
const (
	WavePending = "pending"
	WaveRunning = "running"
	WaveDone    = "done"
)

// ErrNotFound is returned when a rollout does not exist.
var ErrNotFound = errors.New("rollout not found")

// Options tune durability.
type Options struct {
	// Synchronous is SQLite's synchronous pragma: FULL (default) survives power
	// loss; NORMAL survives a killed process (kill -9) but may lose the last
	// commits on power loss.
	Synchronous string
}

// Store is an open database.
type Store struct {
	db       *sql.DB
	path     string
	readOnly bool
	ops      chan op

	mu       sync.RWMutex // guards isClosed against sends on the closed ops channel
	isClosed bool
	closed   chan struct{}

	stmtMu sync.Mutex
	stmts  map[string]*sql.Stmt // prepared once, reused by every write transaction
}

// wtx is a write transaction whose Exec and QueryRow reuse statements
// prepared once per connection. Parsing the same SQL again for every node
// transition and audit line was a sixth of a 30,000-node rollout's CPU time.
type wtx struct {
	*sql.Tx
	s *Store

	// nextAudit is the id the next audit line of a node transition gets
	// (0: not read yet in this transaction). writeNodeChunk numbers its
	// audit rows itself so that each node row can list its lines' ids
	// (nodes.audit_ids) in the same statement that updates it.
	nextAudit int64
}

// auditIDs reserves n audit ids in this transaction and returns the first.
// The transaction holds the database's write lock, so nobody else can take
// them; any other audit insert in between resets the counter (see commit).
func (t *wtx) auditIDs(n int) (int64, error) {
	if t.nextAudit == 0 {
		// AUTOINCREMENT's own rule: above every id ever handed out
		// (sqlite_sequence) and every row present.
		var last int64
		if err := t.QueryRow(`SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'audit'), 0),
			COALESCE((SELECT MAX(id) FROM audit), 0))`).Scan(&last); err != nil {
			return 0, fmt.Errorf("reading the last audit id: %w", err)
		}

		t.nextAudit = last + 1
	}

	first := t.nextAudit
	t.nextAudit += int64(n)

	return first, nil
}

// maxStmts bounds the statement cache; queries beyond it (none today) are
// parsed each time.
const maxStmts = 64

func (s *Store) prepared(query string) *sql.Stmt {
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()

	if st, ok := s.stmts[query]; ok {
		return st
	}

	if len(s.stmts) >= maxStmts {
		return nil
	}

	st, err := s.db.Prepare(query)
	if err != nil {
		return nil // the plain Exec below reports the error
	}

	if s.stmts == nil {
		s.stmts = map[string]*sql.Stmt{}
	}

	s.stmts[query] = st

	return st
}

func (t *wtx) Exec(query string, args ...any) (sql.Result, error) {
	if st := t.s.prepared(query); st != nil {
		return t.Tx.Stmt(st).Exec(args...)
	}

	return t.Tx.Exec(query, args...)
}

func (t *wtx) QueryRow(query string, args ...any) *sql.Row {
	if st := t.s.prepared(query); st != nil {
		return t.Tx.Stmt(st).QueryRow(args...)
	}

	return t.Tx.QueryRow(query, args...)
}

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("store is closed")

// ErrReadOnly is returned by writes to a store opened with OpenReadOnly.
var ErrReadOnly = errors.New("store is open read-only")

type op struct {
	fn    func(*wtx) error
	rec   *nodeRecord // a node transition, written with its batch neighbours' (fn is nil)
	lease *Lease      // checked once per transaction before fn runs; nil: unguarded
	done  chan error
}

// Open opens (creating if needed) the database at path and brings its schema
// up to date. Commands that only read use OpenReadOnly instead.
func Open(path string, opts Options) (*Store, error) {
	syncMode := opts.Synchronous
	if syncMode == "" {
		syncMode = "FULL"
	}

	// temp_store(MEMORY): a statement that writes many rows (the node
	// records, writeNodeRecords) keeps a statement journal to undo itself
	// alone if it fails halfway; on disk that journal was a pwrite per page
	// touched. It only ever undoes one statement inside a transaction:
	// crash recovery goes through the WAL, so durability is unchanged.
	dsn := fmt.Sprintf("file:%s?_txlock=immediate&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(%s)&_pragma=temp_store(MEMORY)", path, syncMode)

	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening database: %w", err)
	}

	db.SetMaxOpenConns(4)

	if err := migrateUp(db); err != nil {
		db.Close() //nolint:errcheck

		return nil, fmt.Errorf("updating the schema of %s: %w", path, err)
	}

	s := &Store{db: db, path: path, ops: make(chan op, 1024), closed: make(chan struct{})}
	go s.writer()

	return s, nil
}

// OpenReadOnly opens an existing database for reading only: it never creates
// the file, never changes its schema, and every write returns ErrReadOnly.
// A database whose schema is older than this fleetctl is refused with a hint.
func OpenReadOnly(path string) (*Store, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("opening database %s: %w (give the --db of an existing rollout database)", path, err)
	}

	db, err := sql.Open("sqlite", fmt.Sprintf("file:%s?mode=ro&_pragma=busy_timeout(10000)", path))
	if err != nil {
		return nil, fmt.Errorf("opening database: %w", err)
	}

	db.SetMaxOpenConns(4)

	if err := checkSchema(db); err != nil {
		db.Close() //nolint:errcheck

		return nil, fmt.Errorf("database %s: %w", path, err)
	}

	s := &Store{db: db, path: path, readOnly: true, ops: make(chan op), closed: make(chan struct{})}
	close(s.closed)

	return s, nil
}

// Close stops the writer and closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()

		return nil
	}

	s.isClosed = true
	if !s.readOnly {
		close(s.ops)
	}
	s.mu.Unlock()

	<-s.closed

	s.stmtMu.Lock()
	for _, st := range s.stmts {
		st.Close() //nolint:errcheck
	}
	s.stmts = nil
	s.stmtMu.Unlock()

	return s.db.Close()
}

// DB exposes the database for read-only inspection (tests, tools).
func (s *Store) DB() *sql.DB { return s.db }

// writer commits queued operations in batches.
func (s *Store) writer() {
	defer close(s.closed)

	const maxBatch = 1024

	for first := range s.ops {
		batch := []op{first}

	drain:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break drain
				}

				batch = append(batch, o)
			default:
				break drain
			}
		}

		if err := s.commit(batch); err != nil {
			// One bad operation must not fail its neighbours: retry them one by one.
			for _, o := range batch {
				o.done <- s.commit([]op{o})
			}

			continue
		}

		for _, o := range batch {
			o.done <- nil
		}
	}
}

func (s *Store) commit(batch []op) error {
	stx, err := s.db.Begin()
	if err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}

	tx := &wtx{Tx: stx, s: s}

	// Each lease is checked once per transaction, in the transaction: a
	// takeover commits before or after it as a whole.
	var checked *Lease

	// Node transitions queue here and are written a few statements at a
	// time (writeNodeRecords); any other operation writes them first, so
	// rows keep the order of the batch.
	var recs []*nodeRecord

	for _, o := range batch {
		if o.lease != nil && o.lease != checked {
			if err := o.lease.check(tx); err != nil {
				tx.Rollback() //nolint:errcheck

				return err
			}

			checked = o.lease
		}

		if o.rec != nil {
			recs = append(recs, o.rec)

			continue
		}

		if err := writeNodeRecords(tx, recs); err != nil {
			tx.Rollback() //nolint:errcheck

			return err
		}

		recs = recs[:0]

		if err := o.fn(tx); err != nil {
			tx.Rollback() //nolint:errcheck

			return err
		}

		// fn may have written audit lines with ids of SQLite's choosing.
		tx.nextAudit = 0
	}

	if err := writeNodeRecords(tx, recs); err != nil {
		tx.Rollback() //nolint:errcheck

		return err
	}

	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}

	return nil
}

// write runs fn in a (group-committed) transaction and returns once it is durable.
func (s *Store) write(ctx context.Context, fn func(*wtx) error) error {
	return s.writeAs(ctx, nil, fn)
}

// writeAs is write guarded by lease (nil: unguarded).
func (s *Store) writeAs(ctx context.Context, lease *Lease, fn func(*wtx) error) error {
	return s.enqueue(ctx, op{fn: fn, lease: lease})
}

// enqueue hands o to the writer and waits until it is committed or failed.
func (s *Store) enqueue(ctx context.Context, o op) error {
	if s.readOnly {
		return ErrReadOnly
	}

	o.done = make(chan error, 1)

	s.mu.RLock()
	if s.isClosed {
		s.mu.RUnlock()

		return ErrClosed
	}

	select {
	case s.ops <- o:
	case <-ctx.Done():
		s.mu.RUnlock()

		return ctx.Err()
	}

	s.mu.RUnlock()

	// Once queued the operation is committed or failed; wait for it even if ctx
	// ends, so callers never act on a record whose fate is unknown.
	return <-o.done
}

func now() int64 { return time.Now().UnixNano() }

func audit(tx *wtx, at int64, actor, rollout, action, subject, detail string) error {
	_, err := tx.Exec(`INSERT INTO audit (at, actor, rollout_id, action, subject, detail) VALUES (?,?,?,?,?,?)`,
		at, actor, rollout, action, subject, detail)
	if err != nil {
		return fmt.Errorf("writing audit log: %w", err)
	}

	return nil
}

// Actor names who runs this process: user@host.
func Actor() string {
	name := os.Getenv("USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		} else {
			name = fmt.Sprintf("uid%d", os.Getuid())
		}
	}

	host, _ := os.Hostname()

	return name + "@" + host
}
