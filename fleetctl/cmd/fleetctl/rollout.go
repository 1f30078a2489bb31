package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/store"
)

func newRolloutCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rollout", Short: "Plan, run and control rollouts"}
	cmd.AddCommand(newRolloutPlanCmd(), newRolloutStartCmd(), newRolloutStatusCmd(), newRolloutPauseCmd(),
		newRolloutResumeCmd(), newRolloutAbortCmd(), newRolloutHistoryCmd())

	return cmd
}

func loadPlan(path string) (*plan.Plan, error) {
	p, err := plan.Load(path)
	if err != nil {
		return nil, bad(err)
	}

	return p, nil
}

// printResult renders a rollout result (start, resume, abort, status).
func printResult(w io.Writer, res engine.Result, asJSON bool) error {
	if asJSON {
		return printJSON(w, res)
	}

	banner(w, res.Simulated)
	fmt.Fprintf(w, "rollout %s (%s): %s", res.RolloutID, res.Name, res.State)

	if res.Reason != "" {
		fmt.Fprintf(w, " (%s)", res.Reason)
	}

	fmt.Fprintf(w, "\nnodes: %d done, %d failed (%d rolled back), %d skipped, %d not finished, of %d\n",
		res.Done, res.Failed, res.RolledBack, res.Skipped, res.Pending, res.Nodes)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tNAME\tSTATE\tNODES\tDONE\tFAILED\tBUDGET\tSKIPPED\tIN-FLIGHT\tPENDING")

	for _, wv := range res.Waves {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", wv.Index, wv.Name, wv.State, wv.Nodes, wv.Done, wv.Failed,
			wv.MaxFailures, wv.Skipped, wv.InFlight, wv.Pending)
	}

	return tw.Flush()
}

// execute runs or resumes a rollout and prints the outcome.
func execute(cmd *cobra.Command, opts engine.Options, id string, create bool, onResumed func()) error {
	asJSON, err := jsonOut()
	if err != nil {
		return err
	}

	opts.OnResumed = onResumed

	var res engine.Result

	if create {
		res, err = engine.Run(cmd.Context(), opts)
	} else {
		res, err = engine.Resume(cmd.Context(), opts, id)
	}

	if res.RolloutID != "" {
		if perr := printResult(cmd.OutOrStdout(), res, asJSON); perr != nil {
			return perr
		}
	}

	return err
}

func newRolloutStartCmd() *cobra.Command {
	var (
		invPath, planPath, driverName, simDir string
	)

	cmd := &cobra.Command{
		Use:   "start",
		Short: "Start a rollout and run it to the end",
		Long: `Freezes the plan and the selected part of the inventory into the database and
executes the rollout in this process. Stop it with Ctrl-C (resume later) or,
from another terminal, with 'fleetctl rollout pause' or 'abort'.`,
		Example: `  fleetctl rollout start --db fleet.db --inventory fleet/ --plan v1.2.0.yaml
  # against the simulator (output marked SIMULATED):
  fleetctl sim init --dir /tmp/sim --clusters 100
  fleetctl rollout start --db /tmp/sim/fleet.db --inventory /tmp/sim/inventory.yaml --plan /tmp/sim/plan.yaml --driver sim --sim-dir /tmp/sim`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if invPath == "" || planPath == "" {
				return bad(errors.New("--inventory and --plan are required"))
			}

			spec, err := driverSpec(driverName, simDir)
			if err != nil {
				return err
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

			if spec == "talos" && servedBySim(inv) {
				spec = "talos:simulated"
			}

			if err := checkKubeconfigs(p, inv, a, spec); err != nil {
				return bad(err)
			}

			st, err := openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			drv, closeDrv, err := openDriver(spec, st)
			if err != nil {
				return err
			}
			defer closeDrv()

			return execute(cmd, engine.Options{
				Inventory: inv, Plan: p, Store: st, Driver: drv, DriverName: spec, Logger: logger(simulated(spec)),
			}, "", true, nil)
		},
	}

	cmd.Flags().StringVar(&invPath, "inventory", "", "inventory file or directory")
	cmd.Flags().StringVar(&planPath, "plan", "", "rollout plan file")
	cmd.Flags().StringVar(&driverName, "driver", "talos", "node driver: talos (machine API, mTLS) or sim (SIMULATED fleet)")
	cmd.Flags().StringVar(&simDir, "sim-dir", "", "simulated fleet directory (with --driver sim)")

	return cmd
}

func newRolloutResumeCmd() *cobra.Command {
	var force bool

	cmd := &cobra.Command{
		Use:   "resume [ROLLOUT]",
		Short: "Continue a paused, interrupted or crashed rollout",
		Long: `Continues the given rollout (default: the most recent one). Nodes that were
being upgraded when the previous process stopped (even by kill -9) are asked
their version: a node already running the target version is not upgraded
again, it only goes through its health gate. Waves finish in order.`,
		Example: `  fleetctl rollout resume --db fleet.db
  fleetctl rollout resume r-20261125-020000-1a2b3c --force   # take over from a process on another host whose heartbeat expired`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()

			st, err := openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			r, err := st.Rollout(cmd.Context(), firstArg(args))
			if err != nil {
				return err
			}

			drv, closeDrv, err := openDriver(r.Driver, st)
			if err != nil {
				return err
			}
			defer closeDrv()

			log := logger(simulated(r.Driver))

			return execute(cmd, engine.Options{Store: st, Driver: drv, DriverName: r.Driver, Logger: log, Force: force}, r.ID, false,
				func() { log.Info("rollout resumed", "rollout", r.ID, "after", time.Since(start).String()) })
		},
	}

	cmd.Flags().BoolVar(&force, "force", false, "take over from a holder on another host whose heartbeat expired (30 s); a live holder on this host is never taken over")

	return cmd
}

func firstArg(args []string) string {
	if len(args) > 0 {
		return args[0]
	}

	return ""
}

func newRolloutPauseCmd() *cobra.Command {
	var wait bool

	cmd := &cobra.Command{
		Use:   "pause [ROLLOUT]",
		Short: "Ask a running rollout to pause (from any terminal)",
		Long: `Records the request in the database. The process executing the rollout
notices within a fraction of a second, starts no new node, lets in-flight
nodes finish their health gate and exits with code 4.`,
		Example: `  fleetctl rollout pause --db fleet.db --wait`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return request(cmd, firstArg(args), store.DesiredPause, wait)
		},
	}

	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the executing process has paused")

	return cmd
}

func newRolloutAbortCmd() *cobra.Command {
	var wait bool

	cmd := &cobra.Command{
		Use:   "abort [ROLLOUT]",
		Short: "Stop a rollout for good (from any terminal)",
		Long: `Records the request in the database. A running process starts no new node and
finishes in-flight ones. If no process runs the rollout, abort finishes the
in-flight nodes itself (health gate, rollback) before marking it aborted.`,
		Example: `  fleetctl rollout abort --db fleet.db`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return request(cmd, firstArg(args), store.DesiredAbort, wait)
		},
	}

	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the executing process has stopped")

	return cmd
}

// request records a pause or abort; with no live executor it applies it itself.
func request(cmd *cobra.Command, id, desired string, wait bool) error {
	ctx := cmd.Context()

	st, err := openStore()
	if err != nil {
		return err
	}
	defer st.Close()

	r, err := st.Rollout(ctx, id)
	if err != nil {
		return err
	}

	if r.State != store.StateRunning && r.State != store.StatePaused {
		return bad(fmt.Errorf("rollout %s is %s", r.ID, r.State))
	}

	actor := store.Actor()
	if err := st.SetDesired(ctx, r.ID, desired, actor); err != nil {
		return err
	}

	live := st.ExecutorLive(r)

	switch {
	case live && wait:
		for {
			cur, err := st.Rollout(ctx, r.ID)
			if err != nil {
				return err
			}

			if cur.State != store.StateRunning {
				break
			}

			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	case live:
		asJSON, err := jsonOut()
		if err != nil {
			return err
		}

		if asJSON {
			return printJSON(cmd.OutOrStdout(), map[string]any{"rollout": r.ID, "requested": desired, "executorHost": r.LeaseHost, "executorPid": r.LeasePID})
		}

		fmt.Fprintf(cmd.OutOrStdout(), "%s requested; %s pid %d stops after its in-flight nodes\n", desired, r.LeaseHost, r.LeasePID)

		return nil
	case desired == store.DesiredPause:
		if err := st.SetState(ctx, r.ID, store.StatePaused, "paused by operator (no process was running it)", actor); err != nil {
			return err
		}
	default:
		drv, closeDrv, err := openDriver(r.Driver, st)
		if err != nil {
			return err
		}
		defer closeDrv()

		return execute(cmd, engine.Options{Store: st, Driver: drv, DriverName: r.Driver, Logger: logger(simulated(r.Driver))}, r.ID, false, nil)
	}

	res, err := engine.Summarise(context.WithoutCancel(ctx), st, r.ID)
	if err != nil {
		return err
	}

	asJSON, err := jsonOut()
	if err != nil {
		return err
	}

	return printResult(cmd.OutOrStdout(), res, asJSON)
}

// checkKubeconfigs refuses, before anything is recorded, a plan with
// health.kubernetes whose selected clusters lack the kubeconfig the talos
// driver reads beside their talosconfig; every missing one is named.
func checkKubeconfigs(p *plan.Plan, inv *inventory.Inventory, a *plan.Assignment, spec string) error {
	if !p.Health.Kubernetes || !strings.HasPrefix(spec, "talos") {
		return nil
	}

	selected := map[string]bool{}

	for _, w := range a.Waves {
		for _, c := range w.Clusters {
			selected[c] = true
		}
	}

	var errs inventory.Errors

	for _, c := range inv.Clusters {
		if !selected[c.Name] {
			continue
		}

		path := talos.KubeconfigPath(c.Talosconfig)
		if _, err := os.Stat(path); err != nil {
			errs = append(errs, &inventory.FieldError{File: c.Source, Entry: fmt.Sprintf("cluster %q", c.Name), Field: "talosconfig",
				Msg: fmt.Sprintf("plan %s sets health.kubernetes, but %s is missing (write it with talosctl kubeconfig %s)", p.Source, path, filepath.Dir(path))})
		}
	}

	if len(errs) > 0 {
		return errs
	}

	return nil
}
