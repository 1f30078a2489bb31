package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newRolloutHistoryCmd() *cobra.Command {
	var (
		audit bool
		limit int
	)

	cmd := &cobra.Command{
		Use:   "history [ROLLOUT]",
		Short: "List past rollouts, or a rollout's audit log (who did what, when)",
		Example: `  fleetctl rollout history --db fleet.db
  fleetctl rollout history --db fleet.db --audit                  # audit log of the latest rollout
  fleetctl rollout history --db fleet.db --audit r-20261125-020000-1a2b3c --limit 0 -o json`,
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

			w := cmd.OutOrStdout()

			if audit {
				r, err := st.Rollout(cmd.Context(), firstArg(args))
				if err != nil {
					return err
				}

				entries, err := st.Audit(cmd.Context(), r.ID, limit)
				if err != nil {
					return err
				}

				if asJSON {
					return printJSON(w, entries)
				}

				banner(w, simulated(r.Driver))

				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "WHEN\tWHO\tWHAT\tSUBJECT\tDETAIL")

				for _, e := range entries {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.At.Local().Format(time.RFC3339Nano), e.Actor, e.Action, e.Subject, e.Detail)
				}

				return tw.Flush()
			}

			rs, err := st.Rollouts(cmd.Context())
			if err != nil {
				return err
			}

			if asJSON {
				return printJSON(w, rs)
			}

			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ROLLOUT\tNAME\tVERSION\tSTATE\tBY\tCREATED\tDRIVER\tREASON")

			for _, r := range rs {
				drv := r.Driver
				if simulated(drv) {
					drv = "SIMULATED"
				}

				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Name, r.Version, r.State, r.CreatedBy,
					r.CreatedAt.Local().Format(time.RFC3339), drv, r.Reason)
			}

			return tw.Flush()
		},
	}

	cmd.Flags().BoolVar(&audit, "audit", false, "show the audit log of the rollout instead of the list")
	cmd.Flags().IntVar(&limit, "limit", 50, "audit entries to show (the latest ones); 0 for all")

	return cmd
}
