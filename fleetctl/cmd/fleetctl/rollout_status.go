package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/store"
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

			st, err := openStore()
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
	if store.LeaseLive(r) {
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

	return out, nil
}
