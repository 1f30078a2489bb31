package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrLeaseHeld is returned when another live process is executing the rollout.
var ErrLeaseHeld = errors.New("rollout is being executed by another process")

// ErrLeaseLost is returned by a Lease's writes once another process has taken
// the rollout over: the write is not applied and the caller must stop
// without asking any node anything more.
var ErrLeaseLost = errors.New("lease lost: another process took this rollout over")

// Lease makes one process the rollout's only executor. Two mechanisms hold
// it: an OS file lock (flock) on DB.lock beside the database, which the
// kernel drops when the process dies, so two executors on one host are
// impossible; and a token in the rollouts row that every state write of the
// executor checks in its own transaction, so an executor on another host
// that was taken over (with --force, after its heartbeat expired) stops at
// its next write.
type Lease struct {
	s       *Store
	rollout string
	token   string
	lock    *os.File

	// TookOver says from whom and why the lease was taken ("" if it was free).
	TookOver string
}

// LockPath is the file whose flock marks the database's executor.
func LockPath(dbPath string) string { return dbPath + ".lock" }

// lockFile takes the executor's flock without waiting.
func lockFile(dbPath string, create bool) (*os.File, error) {
	p := dbPath
	if real, err := filepath.EvalSymlinks(dbPath); err == nil {
		p = real // one lock per database, however it is named
	}

	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}

	f, err := os.OpenFile(LockPath(p), flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening executor lock: %w", err)
	}

	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close() //nolint:errcheck

		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}

		return nil, fmt.Errorf("locking %s: %w", LockPath(p), err)
	}

	return f, nil
}

var errLocked = errors.New("locked")

// AcquireLease makes this process the rollout's executor.
//
//   - The database's file lock held by another process on this host: refused,
//     force or not (that process is alive: the kernel drops the lock of a
//     dead one). The error names the holder.
//   - A holder recorded on this host while the file lock is free is dead
//     (kill -9): taken over, with or without force.
//   - A holder on another host that heartbeated within staleAfter: refused,
//     force or not.
//   - A holder on another host whose heartbeat expired: taken over only with
//     force (it may be partitioned, not dead: the operator decides). Its
//     writes then fail with ErrLeaseLost.
//
// Lease.TookOver says which case applied.
func (s *Store) AcquireLease(ctx context.Context, id, host string, pid int, staleAfter time.Duration, force bool, actor string) (*Lease, error) {
	lock, err := lockFile(s.path, true)
	if errors.Is(err, errLocked) {
		r, rerr := s.Rollout(ctx, id)
		if rerr != nil {
			return nil, fmt.Errorf("%w: another process on this host holds %s", ErrLeaseHeld, LockPath(s.path))
		}

		return nil, fmt.Errorf("%w: %s pid %d is alive and holds %s (last heartbeat %s ago); --force never takes over a live executor: pause it, or stop that process first",
			ErrLeaseHeld, r.LeaseHost, r.LeasePID, LockPath(s.path), time.Since(r.LeaseAt).Round(time.Second))
	}

	if err != nil {
		return nil, err
	}

	l := &Lease{s: s, rollout: id, token: newToken(), lock: lock}

	err = s.write(ctx, func(tx *wtx) error {
		var (
			lh string
			lp int
			la int64
		)

		err := tx.QueryRow(`SELECT lease_host, lease_pid, lease_at FROM rollouts WHERE id = ?`, id).Scan(&lh, &lp, &la)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}

		if err != nil {
			return fmt.Errorf("reading lease: %w", err)
		}

		l.TookOver = ""

		if lp != 0 {
			age := time.Since(t(la)).Round(time.Second)

			switch {
			case lh == host:
				l.TookOver = fmt.Sprintf("took over from %s pid %d: that process is gone (the database lock was free)", lh, lp)
			case age < staleAfter:
				return fmt.Errorf("%w: %s pid %d heartbeated %s ago; --force takes over only after %s without a heartbeat",
					ErrLeaseHeld, lh, lp, age, staleAfter)
			case !force:
				return fmt.Errorf("%w: %s pid %d has not heartbeated for %s; if that process is gone, 'rollout resume --force' takes over",
					ErrLeaseHeld, lh, lp, age)
			default:
				l.TookOver = fmt.Sprintf("took over from %s pid %d (--force): no heartbeat for %s", lh, lp, age)
			}
		}

		at := now()
		if _, err := tx.Exec(`UPDATE rollouts SET lease_host = ?, lease_pid = ?, lease_at = ?, lease_token = ?,
			started_at = CASE WHEN started_at = 0 THEN ? ELSE started_at END WHERE id = ?`,
			host, pid, at, l.token, at, id); err != nil {
			return fmt.Errorf("taking lease: %w", err)
		}

		detail := fmt.Sprintf("host=%s pid=%d", host, pid)
		if l.TookOver != "" {
			detail += " " + l.TookOver
		}

		return audit(tx, at, actor, id, "rollout.lease", id, detail)
	})
	if err != nil {
		lock.Close() //nolint:errcheck

		return nil, err
	}

	return l, nil
}

func newToken() string {
	b := make([]byte, 16)
	rand.Read(b) //nolint:errcheck // crypto/rand.Read never fails

	return hex.EncodeToString(b)
}

// check is the first statement of every lease-guarded transaction.
func (l *Lease) check(tx *wtx) error {
	var token string
	if err := tx.QueryRow(`SELECT lease_token FROM rollouts WHERE id = ?`, l.rollout).Scan(&token); err != nil {
		return fmt.Errorf("checking lease: %w", err)
	}

	if token != l.token {
		return ErrLeaseLost
	}

	return nil
}

// guarded runs fn in a write transaction only while this lease is held.
func (l *Lease) guarded(ctx context.Context, fn func(*wtx) error) error {
	return l.s.writeAs(ctx, l, fn)
}

// Heartbeat refreshes the lease; ErrLeaseLost if another process took it.
func (l *Lease) Heartbeat(ctx context.Context) error {
	return l.guarded(ctx, func(tx *wtx) error {
		if _, err := tx.Exec(`UPDATE rollouts SET lease_at = ? WHERE id = ?`, now(), l.rollout); err != nil {
			return fmt.Errorf("refreshing lease: %w", err)
		}

		return nil
	})
}

// Release clears the lease if still held and drops the file lock.
func (l *Lease) Release(ctx context.Context) error {
	err := l.s.write(ctx, func(tx *wtx) error {
		_, err := tx.Exec(`UPDATE rollouts SET lease_host = '', lease_pid = 0, lease_token = '' WHERE id = ? AND lease_token = ?`, l.rollout, l.token)

		return err
	})

	if cerr := l.lock.Close(); err == nil {
		err = cerr
	}

	return err
}

// RecordNode is Store.RecordNode under this lease.
func (l *Lease) RecordNode(ctx context.Context, actor string, tr Transition) error {
	return l.s.enqueue(ctx, op{rec: &nodeRecord{rollout: l.rollout, actor: actor, tr: tr}, lease: l})
}

// SetWaveState is Store.SetWaveState under this lease.
func (l *Lease) SetWaveState(ctx context.Context, idx int, state, actor string) error {
	return l.guarded(ctx, setWaveState(l.rollout, idx, state, actor))
}

// SetState is Store.SetState under this lease.
func (l *Lease) SetState(ctx context.Context, state, reason, actor string) error {
	return l.guarded(ctx, setState(l.rollout, state, reason, actor))
}

// SetDesired is Store.SetDesired under this lease.
func (l *Lease) SetDesired(ctx context.Context, desired, actor string) error {
	return l.guarded(ctx, setDesired(l.rollout, desired, actor))
}

// LeaseLive reports whether the rollout's lease holder is (probably) alive:
// on this host its pid exists; elsewhere it heartbeated recently.
func LeaseLive(r *Rollout) bool {
	if r.LeasePID == 0 {
		return false
	}

	host, _ := os.Hostname()
	if r.LeaseHost == host {
		return pidAlive(r.LeasePID)
	}

	return time.Since(r.LeaseAt) < 30*time.Second
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)

	return err == nil || errors.Is(err, syscall.EPERM)
}

// ExecutorLive reports whether a process executes the rollout now. On this
// host the database's file lock answers it exactly (pids get reused);
// elsewhere a recent heartbeat does.
func (s *Store) ExecutorLive(r *Rollout) bool {
	if r.LeasePID == 0 {
		return false
	}

	host, _ := os.Hostname()
	if r.LeaseHost != host {
		return time.Since(r.LeaseAt) < 30*time.Second
	}

	f, err := lockFile(s.path, false) // read-only commands create nothing
	if err != nil {
		return errors.Is(err, errLocked)
	}

	f.Close() //nolint:errcheck

	return false
}
