package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/overview"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// statusOut is `rollout status` output: the summary plus live figures,
// computed by the overview's code so the page, its API and the CLI agree.
type statusOut = overview.Status

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
	return overview.RolloutStatus(cmd.Context(), st, id, time.Now())
}
