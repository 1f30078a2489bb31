package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/window"
)

func newSimCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "SIMULATED fleets for scale tests and demos",
		Long: `Creates and inspects simulated fleets. A simulated fleet is a directory with
inventory.yaml, plan.yaml, sim.yaml (node behaviour) and journal.log (every
upgrade, rollback and reboot a simulated node received). Run rollouts against
it with 'rollout start --driver sim --sim-dir DIR', or serve its nodes over the
real machine API with 'sim serve'. All output about it is marked SIMULATED.`,
	}
	cmd.AddCommand(newSimInitCmd(), newSimServeCmd(), newSimInspectCmd())

	return cmd
}

func newSimInitCmd() *cobra.Command {
	var (
		dir                         string
		spec                        sim.Spec
		b                           sim.Behaviour
		latency, stage, reboot      time.Duration
		target                      string
		concurrency, maxUnavail     int
		timeout, interval, soak     time.Duration
		upgradeTimeout              time.Duration
		waveFailPct, overallFailPct float64
		windowStart, windowDuration string
	)

	cmd := &cobra.Command{
		Use:   "init",
		Short: "Write a SIMULATED fleet (inventory, plan, behaviour) into a directory",
		Example: `  fleetctl sim init --dir /tmp/sim --clusters 10000 --nodes-per-cluster 3 --fail-rate 0.02
  fleetctl sim init --dir /tmp/bad --clusters 2 --nodes-per-cluster 1 --bad-version v2.0.0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || spec.Clusters <= 0 {
				return bad(errors.New("--dir and --clusters (> 0) are required"))
			}

			b.Latency, b.StageTime, b.RebootTime = sim.Duration(latency), sim.Duration(stage), sim.Duration(reboot)

			if windowStart != "" {
				w := window.Window{Start: windowStart, Duration: windowDuration}
				if err := w.Validate(); err != nil {
					return bad(fmt.Errorf("--window-start/--window-duration: %w", err))
				}

				spec.Windows = []window.Window{w}
			}
			if err := b.Validate(); err != nil {
				return bad(err)
			}

			p := &plan.Plan{
				Name: "sim-" + target, Image: sim.Image(target), Version: target,
				Waves: []plan.Wave{
					{Name: "canary", Count: 1},
					{Name: "early", Percent: 10, MaxFailurePercent: waveFailPct},
					{Name: "half", Percent: 50, MaxFailurePercent: waveFailPct},
					{Name: "all", Percent: 100, MaxFailurePercent: waveFailPct},
				},
				Concurrency: concurrency, MaxUnavailable: maxUnavail,
				Health: plan.HealthGate{Timeout: plan.Duration(timeout), Interval: plan.Duration(interval), Soak: plan.Duration(soak),
					UpgradeTimeout: plan.Duration(upgradeTimeout)},
				Budget: plan.Budget{MaxFailurePercent: overallFailPct},
			}
			p.Default()

			if err := p.Validate(); err != nil {
				return bad(err)
			}

			if err := sim.WriteDir(dir, spec, b, p); err != nil {
				return err
			}

			fmt.Fprintf(cmd.OutOrStdout(), "%s fleet: %d clusters x %d nodes written to %s (inventory.yaml, plan.yaml, sim.yaml)\n",
				sim.Label, spec.Clusters, max(spec.NodesPerCluster, 1), dir)

			return nil
		},
	}

	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the fleet into")
	f.IntVar(&spec.Clusters, "clusters", 0, "number of clusters")
	f.IntVar(&spec.NodesPerCluster, "nodes-per-cluster", 3, "nodes per cluster (one control plane, the rest workers)")
	f.IntVar(&spec.ClustersPerSite, "clusters-per-site", 10, "clusters per site")
	f.IntVar(&spec.Regions, "regions", 10, "regions the sites are spread over")
	f.Int64Var(&b.Seed, "seed", 1, "seed deciding which nodes fail")
	f.StringVar(&b.InitialVersion, "initial-version", "v1.0.0", "version every node runs at first")
	f.StringVar(&target, "target-version", "v2.0.0", "version the generated plan rolls out")
	f.Float64Var(&b.FailRate, "fail-rate", 0, "share of nodes (0-1) that come back unhealthy")
	f.Float64Var(&b.HangRate, "hang-rate", 0, "share of nodes (0-1) that never come back from the reboot")
	f.StringSliceVar(&b.BadVersions, "bad-version", nil, "versions that come up unhealthy on every node")
	f.StringSliceVar(&b.FallbackVersions, "fallback-version", nil, "versions that never boot: nodes fall back to their previous image by themselves")
	f.BoolVar(&b.TalosLike, "talos-like", false, "behave like real Talos: control planes of one-member etcd refuse upgrades without preserve; a service without health check is listed")
	f.DurationVar(&latency, "latency", 0, "added to every node API call")
	f.DurationVar(&stage, "stage-time", 0, "time a node keeps its old version after accepting an upgrade")
	f.DurationVar(&reboot, "reboot-time", 0, "time a node is unreachable while rebooting")
	f.StringVar(&windowStart, "window-start", "", "give every site a daily maintenance window starting at this local HH:MM (default: always open)")
	f.StringVar(&windowDuration, "window-duration", "4h", "length of that window")
	f.IntVar(&concurrency, "concurrency", 50, "plan: clusters in parallel per wave")
	f.IntVar(&maxUnavail, "max-unavailable", 1, "plan: workers per cluster at once")
	f.DurationVar(&timeout, "health-timeout", 2*time.Second, "plan: health gate timeout")
	f.DurationVar(&interval, "health-interval", 20*time.Millisecond, "plan: health gate polling interval")
	f.DurationVar(&soak, "soak", 0, "plan: soak time")
	f.DurationVar(&upgradeTimeout, "upgrade-timeout", 0, "plan: Upgrade call timeout, part of the window a node needs (default 10m)")
	f.Float64Var(&waveFailPct, "wave-failure-percent", 5, "plan: failure budget per percentage wave (percent of its nodes)")
	f.Float64Var(&overallFailPct, "failure-percent", 5, "plan: overall failure budget (percent of all nodes)")

	return cmd
}
