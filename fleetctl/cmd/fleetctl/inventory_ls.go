package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/window"
)

func newInventoryLsCmd() *cobra.Command {
	var sites bool

	cmd := &cobra.Command{
		Use:   "ls PATH",
		Short: "List clusters (or sites) of an inventory",
		Example: `  fleetctl inventory ls fleet/
  fleetctl inventory ls fleet/ --sites      # with whether each window is open now`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			inv, err := loadInventory(args[0])
			if err != nil {
				return err
			}

			if sites {
				type siteOut struct {
					Name, Region, Country, TimeZone, Bandwidth string
					OpenNow                                    bool
					NextOpen                                   time.Time
				}

				var out []siteOut

				now := time.Now()

				for _, s := range inv.Sites {
					sch, err := window.NewSchedule(s.TimeZone, s.Windows)
					if err != nil {
						return bad(err)
					}

					out = append(out, siteOut{s.Name, s.Region, s.Country, s.TimeZone, s.Bandwidth, sch.Open(now), sch.NextOpen(now)})
				}

				if asJSON {
					return printJSON(cmd.OutOrStdout(), out)
				}

				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SITE\tREGION\tCOUNTRY\tTIMEZONE\tBANDWIDTH\tWINDOW")

				for _, s := range out {
					state := "open"
					if !s.OpenNow {
						state = "opens " + s.NextOpen.Format(time.RFC3339)
					}

					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Region, s.Country, s.TimeZone, s.Bandwidth, state)
				}

				return tw.Flush()
			}

			if asJSON {
				return printJSON(cmd.OutOrStdout(), inv.Clusters)
			}

			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CLUSTER\tSITE\tNODES\tCONTROLPLANE\tTALOSCONFIG")

			for _, c := range inv.Clusters {
				cp := 0

				for _, n := range c.Nodes {
					if n.Role == "controlplane" {
						cp++
					}
				}

				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", c.Name, c.Site, len(c.Nodes), cp, c.Talosconfig)
			}

			return tw.Flush()
		},
	}

	cmd.Flags().BoolVar(&sites, "sites", false, "list sites with their maintenance window state instead of clusters")

	return cmd
}
