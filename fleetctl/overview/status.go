package overview

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// Status is a rollout's progress exactly as `fleetctl rollout status -o json`
// prints it (the same fields, the same rules), so the page, the API and the
// CLI never disagree: `rollout status` calls RolloutStatus itself, and
// TestOverviewStatusMatchesCLI in cmd/fleetctl compares the two outputs.
type Status struct {
	engine.Result

	Desired   string    `json:"desired"`
	Executor  string    `json:"executor,omitempty"`
	StartedAt time.Time `json:"startedAt"`
	// NodesPerMinute is the finishing rate since the rollout started.
	NodesPerMinute float64 `json:"nodesPerMinute"`
	// ETA estimates when every node is finished at that rate (zero when unknown).
	ETA time.Time `json:"eta,omitzero"`
	// WaitingForWindow counts not-started nodes of the current wave whose
	// site is outside its maintenance window now; NextWindow is the earliest opening.
	WaitingForWindow int       `json:"waitingForWindow"`
	NextWindow       time.Time `json:"nextWindow,omitzero"`
	// WaitingSites lists those sites, earliest next window first.
	WaitingSites []SiteWait `json:"waitingSites,omitempty"`
}

// SiteWait is one closed site the current wave waits for.
type SiteWait struct {
	Site     string    `json:"site"`
	TimeZone string    `json:"timezone"`
	Nodes    int       `json:"nodes"`
	Next     time.Time `json:"nextWindow"` // in the site's zone
}

// RolloutStatus computes Status of rollout id ("" means the latest) at now.
func RolloutStatus(ctx context.Context, st *store.Store, id string, now time.Time) (Status, error) {
	return rolloutStatus(ctx, st, id, now, func(id string) (map[string]*window.Schedule, error) { return schedules(ctx, st, id) })
}

// scheduleFunc returns a rollout's frozen site schedules (cached by the server: they never change).
type scheduleFunc func(id string) (map[string]*window.Schedule, error)

func rolloutStatus(ctx context.Context, st *store.Store, id string, now time.Time, sched scheduleFunc) (Status, error) {
	r, err := st.Rollout(ctx, id)
	if err != nil {
		return Status{}, err
	}

	res, err := engine.Summarise(ctx, st, r.ID)
	if err != nil {
		return Status{}, err
	}

	out := Status{Result: res, Desired: r.Desired, StartedAt: r.StartedAt}
	if st.ExecutorLive(r) {
		out.Executor = fmt.Sprintf("%s pid %d", r.LeaseHost, r.LeasePID)
	}

	finished := res.Done + res.Failed + res.Skipped
	if !r.StartedAt.IsZero() && finished > 0 && r.State == store.StateRunning {
		elapsed := now.Sub(r.StartedAt)
		rate := float64(finished) / elapsed.Minutes()
		out.NodesPerMinute = rate

		if remaining := res.Nodes - finished; remaining > 0 && rate > 0 {
			out.ETA = now.Add(time.Duration(float64(remaining) / rate * float64(time.Minute)))
		}
	}

	if r.State == store.StateRunning || r.State == store.StatePaused {
		if err := windowWait(ctx, st, r.ID, res, now, sched, &out); err != nil {
			return Status{}, err
		}
	}

	return out, nil
}

// schedules decodes the frozen site schedules of a rollout.
func schedules(ctx context.Context, st *store.Store, id string) (map[string]*window.Schedule, error) {
	sites, err := st.Sites(ctx, id)
	if err != nil {
		return nil, err
	}

	out := make(map[string]*window.Schedule, len(sites))

	for _, s := range sites {
		var ws []window.Window
		if err := json.Unmarshal([]byte(s.Windows), &ws); err != nil {
			return nil, fmt.Errorf("decoding windows of site %s: %w", s.Name, err)
		}

		sch, err := window.NewSchedule(s.TimeZone, ws)
		if err != nil {
			return nil, fmt.Errorf("site %s: %w", s.Name, err)
		}

		out[s.Name] = sch
	}

	return out, nil
}

// currentWave is the first wave not done (-1 when all are).
func currentWave(res engine.Result) int {
	for _, w := range res.Waves {
		if w.State != store.WaveDone {
			return w.Index
		}
	}

	return -1
}

// windowWait fills the maintenance-window figures of the first unfinished wave.
func windowWait(ctx context.Context, st *store.Store, id string, res engine.Result, now time.Time, sched scheduleFunc, out *Status) error {
	current := currentWave(res)
	if current < 0 {
		return nil
	}

	sch, err := sched(id)
	if err != nil {
		return err
	}

	closed := map[string]time.Time{}

	for name, s := range sch {
		if !s.Open(now) {
			closed[name] = s.NextOpen(now)
		}
	}

	if len(closed) == 0 {
		return nil
	}

	rows, err := st.DB().QueryContext(ctx, `SELECT site, COUNT(*) FROM nodes WHERE rollout_id = ? AND wave = ? AND state = ? GROUP BY site`,
		id, current, store.NodePending)
	if err != nil {
		return fmt.Errorf("counting waiting nodes: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	for rows.Next() {
		var (
			site string
			n    int
		)

		if err := rows.Scan(&site, &n); err != nil {
			return fmt.Errorf("counting waiting nodes: %w", err)
		}

		next, isClosed := closed[site]
		if !isClosed {
			continue
		}

		out.WaitingForWindow += n

		if out.NextWindow.IsZero() || next.Before(out.NextWindow) {
			out.NextWindow = next
		}

		loc := sch[site].Location()
		out.WaitingSites = append(out.WaitingSites, SiteWait{Site: site, TimeZone: loc.String(), Nodes: n, Next: next.In(loc)})
	}

	if err := rows.Err(); err != nil {
		return fmt.Errorf("counting waiting nodes: %w", err)
	}

	slices.SortFunc(out.WaitingSites, func(a, b SiteWait) int {
		if c := a.Next.Compare(b.Next); c != 0 {
			return c
		}

		return strings.Compare(a.Site, b.Site)
	})

	return nil
}
