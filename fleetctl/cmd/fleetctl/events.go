package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

func newEventsCmd() *cobra.Command {
	var limit int

	cmd := &cobra.Command{
		Use:   "events NODE",
		Short: "Show a node's last events as the hub received them (NODE: machine UUID or tunnel address)",
		Example: `  fleetctl events 4c4c4544-0042-3510-8052-b4c04f4b4e32 --db fleet.db
  fleetctl events 4c4c4544-0042-3510-8052-b4c04f4b4e32 --limit 5 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, asJSON, done, err := openRegistry()
			if err != nil {
				return err
			}
			defer done()

			m, err := resolveMachine(cmd.Context(), reg, args[0])
			if err != nil {
				return err
			}

			evs, err := reg.Events(cmd.Context(), m.UUID, limit)
			if err != nil {
				return err
			}

			if asJSON {
				if evs == nil {
					evs = []registry.Event{}
				}

				return printJSON(cmd.OutOrStdout(), evs)
			}

			w := cmd.OutOrStdout()
			for _, e := range evs {
				fmt.Fprintf(w, "%s  %-32s %s\n", e.At.Local().Format(time.RFC3339), e.Type, e.Payload)
			}

			return nil
		},
	}

	cmd.Flags().IntVar(&limit, "limit", 0, "only the last N events (0: all the hub keeps, up to 200)")

	return cmd
}
