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
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
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
}

// rawConn is what the writer needs of the SQLite driver's own connection
// (modernc.org/sqlite's implements all of it).
type rawConn interface {
	driver.Conn
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
}

// wtx is a write transaction on the writer's connection. The writer holds
// one connection for its lifetime and talks to the driver directly
// (sql.Conn.Raw): database/sql's per-statement work (a Tx.Stmt wrapper, a
// connection lock, converting every []any to driver values) was a tenth of
// the store's CPU time in a 30,000-node rollout, and writeNodeChunk binds
// its values from one reused []driver.NamedValue. Statements are prepared
// once on that connection and reused by every transaction.
type wtx struct {
	c     rawConn
	stmts map[string]driver.Stmt
	nv    []driver.NamedValue // argument buffer, reused by every statement

	nodeNV, auditNV []driver.NamedValue // writeNodeChunk's argument buffers
	states          map[string][2]driver.Value

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

// stmt returns query prepared on the writer's connection, nil if the cache
// is full or it does not prepare (the unprepared call then reports why).
func (t *wtx) stmt(query string) driver.Stmt {
	if st, ok := t.stmts[query]; ok {
		return st
	}

	if len(t.stmts) >= maxStmts {
		return nil
	}

	st, err := t.c.PrepareContext(context.Background(), query)
	if err != nil {
		return nil
	}

	// Only statements that run with a context are cached (modernc's all
	// do); execNV and QueryRow rely on it.
	_, execs := st.(driver.StmtExecContext)
	_, queries := st.(driver.StmtQueryContext)

	if !execs || !queries {
		st.Close() //nolint:errcheck

		return nil
	}

	t.stmts[query] = st

	return st
}

// close finalizes the prepared statements (before the connection goes back).
func (t *wtx) close() {
	for q, st := range t.stmts {
		st.Close() //nolint:errcheck
		delete(t.stmts, q)
	}
}

// values converts args as database/sql would and returns them in t.nv.
func (t *wtx) values(args []any) ([]driver.NamedValue, error) {
	nv := t.nv[:0]

	for i, a := range args {
		v, err := driverValue(a)
		if err != nil {
			return nil, fmt.Errorf("argument %d: %w", i+1, err)
		}

		nv = append(nv, driver.NamedValue{Ordinal: i + 1, Value: v})
	}

	t.nv = nv

	return nv, nil
}

// driverValue is database/sql's conversion of an argument, with the types
// the store binds done without reflection.
func driverValue(a any) (driver.Value, error) {
	switch v := a.(type) {
	case nil, string, int64, []byte, bool, float64:
		return v, nil
	case int:
		return int64(v), nil
	default:
		return driver.DefaultParameterConverter.ConvertValue(a)
	}
}

// execNV runs query with arguments already in driver form.
func (t *wtx) execNV(query string, nv []driver.NamedValue) (driver.Result, error) {
	ctx := context.Background()

	if st := t.stmt(query); st != nil {
		return st.(driver.StmtExecContext).ExecContext(ctx, nv)
	}

	return t.c.ExecContext(ctx, query, nv)
}

// Exec runs a statement in the transaction.
func (t *wtx) Exec(query string, args ...any) (sql.Result, error) {
	nv, err := t.values(args)
	if err != nil {
		return nil, err
	}

	return t.execNV(query, nv)
}

// QueryRow runs a query in the transaction; its Scan reads the first row
// (sql.ErrNoRows if none), as database/sql's QueryRow.
func (t *wtx) QueryRow(query string, args ...any) *row {
	nv, err := t.values(args)
	if err != nil {
		return &row{err: err}
	}

	ctx := context.Background()

	var rows driver.Rows
	if st := t.stmt(query); st != nil {
		rows, err = st.(driver.StmtQueryContext).QueryContext(ctx, nv)
	} else {
		rows, err = t.c.QueryContext(ctx, query, nv)
	}

	if err != nil {
		return &row{err: err}
	}

	// Read the row now: the statement is reset (and reusable) on Close.
	vals := make([]driver.Value, len(rows.Columns()))

	err = rows.Next(vals)
	if errors.Is(err, io.EOF) {
		err = sql.ErrNoRows
	}

	if cerr := rows.Close(); err == nil {
		err = cerr
	}

	return &row{vals: vals, err: err}
}

// row is the result of wtx.QueryRow.
type row struct {
	vals []driver.Value
	err  error
}

// Scan copies the row's columns into dest (*string, *int, *int64).
func (r *row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}

	if len(dest) != len(r.vals) {
		return fmt.Errorf("scanning %d columns into %d values", len(r.vals), len(dest))
	}

	for i, d := range dest {
		if err := assign(d, r.vals[i]); err != nil {
			return fmt.Errorf("column %d: %w", i+1, err)
		}
	}

	return nil
}

// assign stores a driver value in *dest, for the destination types the
// writer reads (NULL reads as the zero value, as the store's columns are
// NOT NULL or COALESCEd).
func assign(dest any, v driver.Value) error {
	switch d := dest.(type) {
	case *string:
		switch x := v.(type) {
		case string:
			*d = x
		case []byte:
			*d = string(x)
		case int64:
			*d = strconv.FormatInt(x, 10)
		case nil:
			*d = ""
		default:
			return fmt.Errorf("cannot read %T into a string", v)
		}
	case *int64:
		x, err := asInt64(v)
		if err != nil {
			return err
		}

		*d = x
	case *int:
		x, err := asInt64(v)
		if err != nil {
			return err
		}

		*d = int(x)
	default:
		return fmt.Errorf("unsupported destination %T", dest)
	}

	return nil
}

func asInt64(v driver.Value) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case nil:
		return 0, nil
	case string:
		return strconv.ParseInt(x, 10, 64)
	case []byte:
		return strconv.ParseInt(string(x), 10, 64)
	default:
		return 0, fmt.Errorf("cannot read %T into an integer", v)
	}
}

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("store is closed")

// ErrReadOnly is returned by writes to a store opened with OpenReadOnly.
var ErrReadOnly = errors.New("store is open read-only")

type op struct {
	fn    func(*wtx) error
	rec   *nodeRecord // a node transition, written with its batch neighbours' (fn is nil)
	lease *Lease      // checked once per transaction before fn runs; nil: unguarded
	batch []op        // commitAll: these operations in one transaction of their own
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

	// The writer holds one connection for good (runOnConn); readers keep
	// the four they had.
	db.SetMaxOpenConns(5)

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

	return s.db.Close()
}

// DB exposes the database for read-only inspection (tests, tools).
func (s *Store) DB() *sql.DB { return s.db }

// writer commits queued operations in batches, on one connection it holds
// until the store is closed.
func (s *Store) writer() {
	defer close(s.closed)

	err := s.runOnConn(func(t *wtx) { s.loop(t) })
	if err != nil {
		// No connection: fail every write instead of hanging its caller.
		for o := range s.ops {
			o.done <- fmt.Errorf("opening the writer's connection: %w", err)
		}
	}
}

// runOnConn runs f with a write transaction handle on a connection of the
// pool, taken for as long as f runs. The driver's connection must not be
// used after Raw returns nor by two goroutines: only the writer's goroutine
// uses it, inside Raw.
func (s *Store) runOnConn(f func(*wtx)) error {
	conn, err := s.db.Conn(context.Background())
	if err != nil {
		return err
	}
	defer conn.Close() //nolint:errcheck

	return conn.Raw(func(dc any) error {
		c, ok := dc.(rawConn)
		if !ok {
			return fmt.Errorf("the SQLite driver's connection (%T) does not prepare statements with a context", dc)
		}

		t := &wtx{c: c, stmts: map[string]driver.Stmt{}, states: map[string][2]driver.Value{}}
		defer t.close()

		f(t)

		return nil
	})
}

func (s *Store) loop(t *wtx) {
	const maxBatch = 1024

	// One buffer for every batch; cleared after use so that it keeps no
	// finished operation's records alive.
	buf := make([]op, 0, maxBatch)

	for first := range s.ops {
		if first.batch != nil {
			first.done <- s.commit(t, first.batch)

			continue
		}

		batch := append(buf[:0], first)

	drain:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break drain
				}

				if o.batch != nil {
					o.done <- s.commit(t, o.batch)

					continue
				}

				batch = append(batch, o)
			default:
				break drain
			}
		}

		if err := s.commit(t, batch); err != nil {
			// One bad operation must not fail its neighbours: retry them one by one.
			for _, o := range batch {
				o.done <- s.commit(t, []op{o})
			}

			clear(batch)

			continue
		}

		for _, o := range batch {
			o.done <- nil
		}

		clear(batch)
	}
}

// commitAll commits batch as one transaction through the writer (no retry
// one by one): tests and benchmarks use it to control the batches.
func (s *Store) commitAll(batch []op) error {
	return s.enqueue(context.Background(), op{batch: batch})
}

func (s *Store) commit(tx *wtx, batch []op) (err error) {
	tx.nextAudit = 0

	if _, err := tx.execNV("BEGIN IMMEDIATE", nil); err != nil {
		return fmt.Errorf("beginning transaction: %w", err)
	}

	defer func() {
		if err != nil {
			// Also after a failed COMMIT: the transaction may still be
			// open (SQLITE_BUSY), and the next BEGIN needs it gone. If it
			// is already gone this fails, harmlessly.
			tx.execNV("ROLLBACK", nil) //nolint:errcheck
		}
	}()

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
				return err
			}

			checked = o.lease
		}

		if o.rec != nil {
			recs = append(recs, o.rec)

			continue
		}

		if err := writeNodeRecords(tx, recs); err != nil {
			return err
		}

		recs = recs[:0]

		if err := o.fn(tx); err != nil {
			return err
		}

		// fn may have written audit lines with ids of SQLite's choosing.
		tx.nextAudit = 0
	}

	if err := writeNodeRecords(tx, recs); err != nil {
		return err
	}

	if _, err := tx.execNV("COMMIT", nil); err != nil {
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
