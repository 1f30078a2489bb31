package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/inventory"
)

func newInventoryCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "inventory", Short: "Check and list the fleet inventory"}
	cmd.AddCommand(newInventoryValidateCmd(), newInventoryLsCmd())

	return cmd
}

func loadInventory(path string) (*inventory.Inventory, error) {
	inv, err := inventory.Load(path)
	if err != nil {
		return nil, bad(err)
	}

	if err := inv.Validate(); err != nil {
		return nil, bad(err)
	}

	return inv, nil
}

func newInventoryValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate PATH",
		Short: "Validate an inventory file or directory",
		Long: `Reads an inventory (one YAML file, or every .yaml file of a directory) and
reports every problem with the file, the entry and the field at fault.
Exit code 2 when the inventory is invalid.`,
		Example: `  fleetctl inventory validate fleet/
  fleetctl inventory validate inventory.yaml -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			inv, err := loadInventory(args[0])

			if asJSON {
				out := map[string]any{"valid": err == nil}
				if err != nil {
					out["error"] = err.Error()
				} else {
					out["sites"], out["clusters"], out["nodes"] = len(inv.Sites), len(inv.Clusters), inv.NodeCount()
				}

				if perr := printJSON(cmd.OutOrStdout(), out); perr != nil {
					return perr
				}

				return err
			}

			if err != nil {
				return err
			}

			fmt.Fprintf(cmd.OutOrStdout(), "inventory valid: %d sites, %d clusters, %d nodes\n", len(inv.Sites), len(inv.Clusters), inv.NodeCount())

			return nil
		},
	}
}
