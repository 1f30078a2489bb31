package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// statusOut is `rollout status` output: the summary plus live figures.
type statusOut struct {
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
	WaitingSites []siteWait `json:"waitingSites,omitempty"`
}

// siteWait is one closed site the current wave waits for.
type siteWait struct {
	Site     string    `json:"site"`
	TimeZone string    `json:"timezone"`
	Nodes    int       `json:"nodes"`
	Next     time.Time `json:"nextWindow"` // in the site's zone
}

func newRolloutStatusCmd() *cobra.Command {
	var watch time.Duration

	cmd := &cobra.Command{
		Use:   "status [ROLLOUT]",
		Short: "Show a rollout's progress: waves, counts, failures, ETA",
		Example: `  fleetctl rollout status --db fleet.db
  fleetctl rollout status --db fleet.db --watch 2s     # refresh until the rollout stops
  fleetctl rollout status --db fleet.db -o json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			st, err := openStoreReadOnly()
			if err != nil {
				return err
			}
			defer st.Close()

			for {
				out, err := status(cmd, st, firstArg(args))
				if err != nil {
					return err
				}

				if asJSON {
					if err := printJSON(cmd.OutOrStdout(), out); err != nil {
						return err
					}
				} else {
					w := cmd.OutOrStdout()
					if err := printResult(w, out.Result, false); err != nil {
						return err
					}

					fmt.Fprintf(w, "desired: %s", out.Desired)

					if out.Executor != "" {
						fmt.Fprintf(w, ", executed by %s", out.Executor)
					}

					if !out.ETA.IsZero() {
						fmt.Fprintf(w, ", %.1f nodes/min, ETA %s", out.NodesPerMinute, out.ETA.Local().Format(time.RFC3339))
					}

					fmt.Fprintln(w)

					if out.WaitingForWindow > 0 {
						fmt.Fprintf(w, "%d nodes of the current wave wait for their maintenance window (next opens %s)\n",
							out.WaitingForWindow, out.NextWindow.Local().Format(time.RFC3339))

						for _, sw := range out.WaitingSites {
							fmt.Fprintf(w, "  %s (%s): %d nodes, next window %s (in %s)\n", sw.Site, sw.TimeZone, sw.Nodes,
								sw.Next.Format(time.RFC3339), time.Until(sw.Next).Round(time.Minute))
						}
					}
				}

				if watch <= 0 || out.State != store.StateRunning {
					return nil
				}

				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(watch):
				}
			}
		},
	}

	cmd.Flags().DurationVar(&watch, "watch", 0, "refresh at this interval while the rollout runs")

	return cmd
}

func status(cmd *cobra.Command, st *store.Store, id string) (statusOut, error) {
	ctx := cmd.Context()

	r, err := st.Rollout(ctx, id)
	if err != nil {
		return statusOut{}, err
	}

	res, err := engine.Summarise(ctx, st, r.ID)
	if err != nil {
		return statusOut{}, err
	}

	out := statusOut{Result: res, Desired: r.Desired, StartedAt: r.StartedAt}
	if st.ExecutorLive(r) {
		out.Executor = fmt.Sprintf("%s pid %d", r.LeaseHost, r.LeasePID)
	}

	finished := res.Done + res.Failed + res.Skipped
	if !r.StartedAt.IsZero() && finished > 0 && r.State == store.StateRunning {
		elapsed := time.Since(r.StartedAt)
		rate := float64(finished) / elapsed.Minutes()
		out.NodesPerMinute = rate

		if remaining := res.Nodes - finished; remaining > 0 && rate > 0 {
			out.ETA = time.Now().Add(time.Duration(float64(remaining) / rate * float64(time.Minute)))
		}
	}

	if r.State == store.StateRunning || r.State == store.StatePaused {
		if err := windowWait(cmd, st, r.ID, res, &out); err != nil {
			return statusOut{}, err
		}
	}

	return out, nil
}

// windowWait fills the maintenance-window figures of the first unfinished wave.
func windowWait(cmd *cobra.Command, st *store.Store, id string, res engine.Result, out *statusOut) error {
	ctx := cmd.Context()

	current := -1

	for _, w := range res.Waves {
		if w.State != store.WaveDone {
			current = w.Index

			break
		}
	}

	if current < 0 {
		return nil
	}

	sites, err := st.Sites(ctx, id)
	if err != nil {
		return err
	}

	now := time.Now()
	closed := map[string]time.Time{}
	zone := map[string]string{}

	for _, s := range sites {
		var ws []window.Window
		if err := json.Unmarshal([]byte(s.Windows), &ws); err != nil {
			return fmt.Errorf("decoding windows of site %s: %w", s.Name, err)
		}

		sch, err := window.NewSchedule(s.TimeZone, ws)
		if err != nil {
			return err
		}

		if !sch.Open(now) {
			closed[s.Name] = sch.NextOpen(now)
			zone[s.Name] = s.TimeZone
		}
	}

	if len(closed) == 0 {
		return nil
	}

	nodes, err := st.Nodes(ctx, id)
	if err != nil {
		return err
	}

	perSite := map[string]int{}

	for _, n := range nodes {
		next, isClosed := closed[n.Site]
		if n.Wave != current || n.State != store.NodePending || !isClosed {
			continue
		}

		out.WaitingForWindow++
		perSite[n.Site]++

		if out.NextWindow.IsZero() || next.Before(out.NextWindow) {
			out.NextWindow = next
		}
	}

	for name, count := range perSite {
		next := closed[name]
		if loc, err := time.LoadLocation(zone[name]); err == nil {
			next = next.In(loc)
		}

		out.WaitingSites = append(out.WaitingSites, siteWait{Site: name, TimeZone: zone[name], Nodes: count, Next: next})
	}

	slices.SortFunc(out.WaitingSites, func(a, b siteWait) int {
		if c := a.Next.Compare(b.Next); c != 0 {
			return c
		}

		return strings.Compare(a.Site, b.Site)
	})

	return nil
}
