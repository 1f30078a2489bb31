package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
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
	// Staging is the per-site estimate when the plan stages.
	Staging      []plan.SiteStaging `json:"staging,omitempty"`
	ImageBytes   int64              `json:"imageBytes,omitempty"`
	StagingError string             `json:"stagingError,omitempty"`
}

type siteWin struct {
	TimeZone string    `json:"timezone"`
	NextOpen time.Time `json:"nextOpen"`
}

func newRolloutPlanCmd() *cobra.Command {
	var (
		invPath, planPath string
		imageBytes        int64
	)

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

			if p.Staging.Enabled {
				if imageBytes == 0 {
					imageBytes, err = imageSize(cmd.Context(), p.Image)
				}

				if err == nil {
					out.ImageBytes = imageBytes
					out.Staging, err = p.EstimateStaging(inv, a, imageBytes, now)
				}

				if err != nil {
					out.StagingError = err.Error()
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
			if p.Staging.Enabled {
				fmt.Fprintf(w, "a node starts only with %s of its window left (switch call %s + gate %s + soak %s: the image is staged ahead)\n",
					p.NodeWindowNeed(), p.Health.CallTimeout.D(), p.Health.Timeout.D(), p.Health.Soak.D())
			} else {
				fmt.Fprintf(w, "a node starts only with %s of its window left (upgrade call %s + gate %s + soak %s)\n",
					p.NodeWindowNeed(), p.Health.UpgradeTimeout.D(), p.Health.Timeout.D(), p.Health.Soak.D())
			}

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

			printStaging(w, out)

			if len(out.ClosedSites) > 0 {
				fmt.Fprintf(w, "%d sites are outside their maintenance window now; their clusters wait for it (see inventory ls --sites)\n", len(out.ClosedSites))
			}

			fmt.Fprintln(w, "nothing was changed")

			return nil
		},
	}

	cmd.Flags().StringVar(&invPath, "inventory", "", "inventory file or directory")
	cmd.Flags().StringVar(&planPath, "plan", "", "rollout plan file")
	cmd.Flags().Int64Var(&imageBytes, "image-size", 0, "bytes a node pulls, for the staging estimate (default: the image's compressed size from its registry)")

	return cmd
}

// imageSize is what a node pulls of ref: its compressed layers and config,
// from the registry's manifest.
func imageSize(ctx context.Context, ref string) (int64, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return 0, fmt.Errorf("image size: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()

	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return 0, fmt.Errorf("image size of %s unknown (%w): give --image-size", ref, err)
	}

	m, err := img.Manifest()
	if err != nil {
		return 0, fmt.Errorf("image size of %s: %w", ref, err)
	}

	size := m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}

	return size, nil
}

// printStaging shows per site what staging moves and whether it fits.
func printStaging(w io.Writer, out planOut) {
	if out.StagingError != "" {
		fmt.Fprintf(w, "staging: %s\n", out.StagingError)

		return
	}

	if len(out.Staging) == 0 {
		return
	}

	fmt.Fprintf(w, "staging: %.1f MB per node pull, ahead of each site's window (rates: low 2, medium 20, high 200 Mbit/s)\n", float64(out.ImageBytes)/1e6)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tNODES\tBYTES (EACH NODE)\tTIME\tFITS\tWITH SITE CACHE\tFITS\tDOWNLOAD TIME BEFORE WINDOW\tWINDOW OPENS")

	yes := map[bool]string{true: "yes", false: "NO"}

	for _, e := range out.Staging {
		fmt.Fprintf(tw, "%s\t%d\t%.1f MB\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Site, e.Nodes, float64(e.Bytes)/1e6,
			e.Duration.Round(time.Second), yes[e.Fits], e.CachedDuration.Round(time.Second), yes[e.CachedFits],
			e.Available.Round(time.Minute), e.WindowOpens.Format(time.RFC3339))
	}

	tw.Flush() //nolint:errcheck
}
