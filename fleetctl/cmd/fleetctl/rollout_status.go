package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/overview"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// statusOut is `rollout status` output: the summary plus live figures,
// computed by the overview's code so the page, its API and the CLI agree,
// plus the staging progress per site (plan staging; absent when the
// rollout does not stage or its stager has not started).
type statusOut struct {
	overview.Status

	Staging []store.SiteStaging `json:"staging,omitempty"`
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

					if err := printStagingProgress(w, out.Staging); err != nil {
						return err
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
	s, err := overview.RolloutStatus(cmd.Context(), st, id, time.Now())
	if err != nil {
		return statusOut{}, err
	}

	staging, err := st.StagingSummary(cmd.Context(), s.RolloutID)
	if err != nil {
		return statusOut{}, err
	}

	return statusOut{Status: s, Staging: staging}, nil
}

// printStagingProgress prints the staging progress per site, then each node whose
// pull failed and why (such a node is not switched).
func printStagingProgress(w io.Writer, sites []store.SiteStaging) error {
	if len(sites) == 0 {
		return nil
	}

	fmt.Fprintln(w, "staging (image pulled ahead of the maintenance windows):")

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SITE\tNODES\tSTAGED\tPULLING\tFAILED\tPENDING\tSTAGED BYTES")

	for _, s := range sites {
		bytes := "-"
		if s.Bytes > 0 {
			bytes = fmt.Sprintf("%.1f MiB", float64(s.Bytes)/(1<<20))
		}

		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%s\n", s.Site, s.Nodes, s.Staged, s.Pulling, s.Failed, s.Pending, bytes)
	}

	if err := tw.Flush(); err != nil {
		return err
	}

	for _, s := range sites {
		for _, f := range s.Failures {
			fmt.Fprintf(w, "  %s not staged: %s\n", f.Node, f.Reason)
		}
	}

	return nil
}
