package main

import (
	"errors"
	"fmt"
	"sort"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/sim"
)

type inspectOut struct {
	Label          string   `json:"label"`
	NodesTouched   int      `json:"nodesTouched"`
	Upgrades       int      `json:"upgrades"`
	Rollbacks      int      `json:"rollbacks"`
	UpgradedTwice  []string `json:"upgradedTwice"`
	JournalEntries int      `json:"journalEntries"`
}

func newSimInspectCmd() *cobra.Command {
	var dir string

	cmd := &cobra.Command{
		Use:     "inspect",
		Short:   "Count what the SIMULATED nodes received (upgrades per node, rollbacks)",
		Long:    "Reads the fleet's journal. Exits 1 if any simulated node was upgraded more than once.",
		Example: `  fleetctl sim inspect --dir /tmp/sim`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			if dir == "" {
				return bad(errors.New("--dir is required"))
			}

			events, err := sim.ReadJournal(dir)
			if err != nil {
				return err
			}

			out := inspectOut{Label: sim.Label, JournalEntries: len(events), UpgradedTwice: []string{}}
			ups := map[string]int{}
			touched := map[string]bool{}

			for _, e := range events {
				touched[e.Node] = true

				switch e.Kind {
				case "U":
					ups[e.Node]++
					out.Upgrades++
				case "R":
					out.Rollbacks++
				}
			}

			out.NodesTouched = len(touched)

			for n, c := range ups {
				if c > 1 {
					out.UpgradedTwice = append(out.UpgradedTwice, n)
				}
			}

			sort.Strings(out.UpgradedTwice)

			if asJSON {
				err = printJSON(cmd.OutOrStdout(), out)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %d nodes touched, %d upgrades, %d rollbacks, %d nodes upgraded more than once %v\n",
					sim.Label, out.NodesTouched, out.Upgrades, out.Rollbacks, len(out.UpgradedTwice), out.UpgradedTwice)
			}

			if err != nil {
				return err
			}

			if len(out.UpgradedTwice) > 0 {
				return fmt.Errorf("%d simulated nodes were upgraded more than once", len(out.UpgradedTwice))
			}

			return nil
		},
	}

	cmd.Flags().StringVar(&dir, "dir", "", "simulated fleet directory")

	return cmd
}
