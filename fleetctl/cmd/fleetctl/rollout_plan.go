package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// planOut is what `rollout plan` shows; nothing is written anywhere.
type planOut struct {
	Name           string             `json:"name"`
	Image          string             `json:"image"`
	Version        string             `json:"version"`
	Assignment     *plan.Assignment   `json:"assignment"`
	Concurrency    []int              `json:"concurrency"`
	MaxUnavailable int                `json:"maxUnavailable"`
	RegionCaps     map[string]int     `json:"regionCaps,omitempty"`
	BandwidthCaps  map[string]int     `json:"bandwidthCaps,omitempty"`
	Health         plan.HealthGate    `json:"health"`
	NodeWindowNeed string             `json:"nodeWindowNeed"` // upgrade + gate + soak: a node starts only if this much of its window is left
	AutoRollback   bool               `json:"autoRollback"`
	ClosedSites    map[string]siteWin `json:"closedSites,omitempty"`
}

type siteWin struct {
	TimeZone string    `json:"timezone"`
	NextOpen time.Time `json:"nextOpen"`
}

func newRolloutPlanCmd() *cobra.Command {
	var invPath, planPath string

	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show the waves a plan produces and what would happen (changes nothing)",
		Example: `  fleetctl rollout plan --inventory fleet/ --plan v1.2.0.yaml
  fleetctl rollout plan --inventory fleet/ --plan v1.2.0.yaml -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			if invPath == "" || planPath == "" {
				return bad(errors.New("--inventory and --plan are required"))
			}

			inv, err := loadInventory(invPath)
			if err != nil {
				return err
			}

			p, err := loadPlan(planPath)
			if err != nil {
				return err
			}

			a, err := p.Assign(inv)
			if err != nil {
				return bad(err)
			}

			out := planOut{
				Name: p.Name, Image: p.Image, Version: p.Version, Assignment: a, MaxUnavailable: p.MaxUnavailable,
				RegionCaps: p.RegionCaps, BandwidthCaps: p.BandwidthCaps, Health: p.Health, AutoRollback: p.Rollback(),
				NodeWindowNeed: p.NodeWindowNeed().String(),
				ClosedSites:    map[string]siteWin{},
			}

			now := time.Now()
			used := map[string]bool{}

			for i, w := range a.Waves {
				out.Concurrency = append(out.Concurrency, p.WaveConcurrency(i))

				for _, c := range w.Clusters {
					for _, cl := range inv.Clusters {
						if cl.Name == c {
							used[cl.Site] = true
						}
					}
				}
			}

			for _, s := range inv.Sites {
				if !used[s.Name] {
					continue
				}

				sch, err := window.NewSchedule(s.TimeZone, s.Windows)
				if err != nil {
					return bad(err)
				}

				if !sch.Open(now) {
					out.ClosedSites[s.Name] = siteWin{TimeZone: s.TimeZone, NextOpen: sch.NextOpen(now)}
				}
			}

			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}

			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "plan %s: %s -> version %s\n", p.Name, p.Image, p.Version)
			fmt.Fprintf(w, "selected: %d clusters, %d nodes; overall failure budget %d nodes\n", a.Clusters, a.Nodes, a.MaxFailures)
			fmt.Fprintf(w, "per cluster: control plane one at a time, workers %d at a time; health gate %s timeout, %s soak, every %s; kubernetes checks %v; auto rollback %v\n",
				p.MaxUnavailable, p.Health.Timeout.D(), p.Health.Soak.D(), p.Health.Interval.D(), p.Health.Kubernetes, p.Rollback())
			fmt.Fprintf(w, "a node starts only with %s of its window left (upgrade call %s + gate %s + soak %s)\n",
				p.NodeWindowNeed(), p.Health.UpgradeTimeout.D(), p.Health.Timeout.D(), p.Health.Soak.D())

			if len(p.RegionCaps)+len(p.BandwidthCaps) > 0 {
				fmt.Fprintf(w, "caps: region %v, bandwidth %v\n", p.RegionCaps, p.BandwidthCaps)
			}

			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "WAVE\tNAME\tCLUSTERS\tNODES\tCONCURRENCY\tBUDGET\tFIRST CLUSTERS")

			for i, wv := range a.Waves {
				first := wv.Clusters[:min(3, len(wv.Clusters))]
				more := ""

				if len(wv.Clusters) > 3 {
					more = ", ..."
				}

				fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%s%s\n", i, wv.Name, len(wv.Clusters), wv.Nodes, out.Concurrency[i], wv.MaxFailures,
					strings.Join(first, ", "), more)
			}

			if err := tw.Flush(); err != nil {
				return err
			}

			if len(out.ClosedSites) > 0 {
				fmt.Fprintf(w, "%d sites are outside their maintenance window now; their clusters wait for it (see inventory ls --sites)\n", len(out.ClosedSites))
			}

			fmt.Fprintln(w, "nothing was changed")

			return nil
		},
	}

	cmd.Flags().StringVar(&invPath, "inventory", "", "inventory file or directory")
	cmd.Flags().StringVar(&planPath, "plan", "", "rollout plan file")

	return cmd
}
