package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// globals are the flags every command shares.
type globals struct {
	db       string
	output   string
	logLevel string
}

var g globals

func newRoot() *cobra.Command {
	g = globals{}

	root := &cobra.Command{
		Use:   "fleetctl",
		Short: "Safe staged rollouts across fleets of Talos and labos clusters",
		Long: `fleetctl upgrades fleets of clusters in waves: a canary first, then growing
percentages, inside each site's maintenance windows, with a health gate per
node, failure budgets that halt the rollout and automatic rollback. Every step
is recorded in an SQLite database, so a rollout survives a crash and resumes
where it stopped.

Exit codes: 0 ok, 1 error, 2 bad input, 3 halted by a failure budget,
4 paused/aborted/interrupted, 5 rollout busy in another process.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}

	root.PersistentFlags().StringVar(&g.db, "db", "fleet.db", "rollout database (SQLite)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level on stderr: debug, info, warn, error")

	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return bad(err) })

	root.AddCommand(newHubCmd(), newMachinesCmd(), newLogsCmd(), newEventsCmd())
	root.AddCommand(newSiteCmd(), newInventoryCmd(), newRolloutCmd(), newSimCmd(), newOverviewCmd())
	root.AddCommand(newSiteCacheCmd())

	return root
}

func jsonOut() (bool, error) {
	switch g.output {
	case "text":
		return false, nil
	case "json":
		return true, nil
	}

	return false, bad(fmt.Errorf("--output %q: want text or json", g.output))
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")

	return enc.Encode(v)
}

func logger(simulated bool) *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}

	l := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if simulated {
		l = l.With("mode", sim.Label)
	}

	return l
}

func openStore() (*store.Store, error) {
	st, err := store.Open(g.db, store.Options{})
	if err != nil {
		return nil, err
	}

	return st, nil
}

// openStoreReadOnly is for commands that only read: they never create a
// database or change its schema.
func openStoreReadOnly() (*store.Store, error) {
	st, err := store.OpenReadOnly(g.db)
	if err != nil {
		return nil, bad(err)
	}

	return st, nil
}

// driverSpec is how a rollout's driver is recorded: "talos" or "sim:<abs dir>".
func driverSpec(name, simDir string) (string, error) {
	switch name {
	case "talos":
		return "talos", nil
	case "sim":
		if simDir == "" {
			return "", bad(fmt.Errorf("--driver sim needs --sim-dir (a directory written by fleetctl sim init)"))
		}

		abs, err := filepath.Abs(simDir)
		if err != nil {
			return "", err
		}

		return "sim:" + abs, nil
	}

	return "", bad(fmt.Errorf("--driver %q: want talos or sim", name))
}

// openDriver builds the factory for a recorded driver spec; closeFn releases
// it. Nodes the inventory names by machine UUID are resolved through the
// hub's registry in st (the hub and the rollout share one --db).
func openDriver(spec string, st *store.Store) (driver.Factory, func(), error) {
	if dir, ok := strings.CutPrefix(spec, "sim:"); ok {
		f, err := sim.OpenDir(dir)
		if err != nil {
			return nil, nil, err
		}

		return f.Factory(), func() { f.Close() }, nil
	}

	reg := registry.New(st.DB())

	return talos.NewFactory(talos.WithMachineResolver(func(ctx context.Context, uuid string) (string, error) {
		return reg.NodeEndpoint(ctx, uuid, hub.NodeAPIPort)
	})), func() {}, nil
}

func simulated(spec string) bool { return engine.IsSimulated(spec) }

func banner(w io.Writer, isSim bool) {
	if isSim {
		fmt.Fprintf(w, "*** %s: no real node is touched ***\n", sim.Label)
	}
}
