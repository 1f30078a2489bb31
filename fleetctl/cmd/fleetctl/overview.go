package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/overview"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// The overview verb serves the fleet overview page from the rollout
// database alone; `fleetctl hub --overview-config` serves it beside the hub
// with the nodes' own reports.
func newOverviewCmd() *cobra.Command {
	var listen, cfgPath, invPath string

	cmd := &cobra.Command{
		Use:   "overview",
		Short: "Serve the fleet overview page and its JSON API (prints the URL)",
		Long: `Serves the fleet overview: regions, sites, clusters and nodes with health
roll-ups and filters, node histories, and the rollout page with live progress
and pause / resume / abort for the operator role. Access is configured in
--config (users with a token hash or a client certificate name, and a role);
TLS is required unless --listen is a loopback address. Every action is
written to the rollout database's audit log with the user's name.`,
		Example: `  fleetctl overview token                      # a new token and the line for the config
  fleetctl overview --db fleet.db --config overview.yaml --listen 127.0.0.1:8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" {
				return bad(errors.New("--config is required (users and roles; see fleetctl/README.md, Overview)"))
			}

			cfg, err := overview.LoadConfig(cfgPath)
			if err != nil {
				return bad(err)
			}

			st, err := openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			srv, err := newOverviewServer(cmd.Context(), st, cfg, invPath, nil)
			if err != nil {
				return err
			}
			defer srv.Close()

			ln, url, err := overview.Listen(listen, cfg)
			if err != nil {
				return bad(err)
			}

			fmt.Fprintf(cmd.OutOrStdout(), "fleet overview: %s\n", url)

			return overview.Serve(cmd.Context(), ln, srv)
		},
	}

	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address to serve on (TLS required unless loopback)")
	cmd.Flags().StringVar(&cfgPath, "config", "", "overview config: users, roles, TLS")
	cmd.Flags().StringVar(&invPath, "inventory", "", "inventory: also show clusters no rollout selected yet")
	cmd.AddCommand(newOverviewTokenCmd())

	return cmd
}

// newOverviewServer builds the overview over the store; pause, resume and
// abort from the page execute the rollout in this process, one execution
// per rollout at a time (the engine's lease refuses a second anyway). facts
// may be nil (no hub in this process).
func newOverviewServer(ctx context.Context, st *store.Store, cfg *overview.Config, invPath string, facts overview.FactSource) (*overview.Server, error) {
	var inv *inventory.Inventory

	if invPath != "" {
		var err error
		if inv, err = loadInventory(invPath); err != nil {
			return nil, err
		}
	}

	log := logger(false)

	var running sync.Map

	exec := func(_ context.Context, id, actor string) error {
		if _, busy := running.LoadOrStore(id, true); busy {
			return fmt.Errorf("this server already executes rollout %s", id)
		}

		r, err := st.Rollout(ctx, id)
		if err != nil {
			running.Delete(id)

			return err
		}

		drv, closeDrv, err := openDriver(r.Driver, st)
		if err != nil {
			running.Delete(id)

			return err
		}

		go func() {
			defer running.Delete(id)
			defer closeDrv()

			res, err := engine.Resume(ctx, engine.Options{
				Store: st, Driver: drv, DriverName: r.Driver, Actor: actor, Logger: logger(simulated(r.Driver)),
			}, id)
			log.Info("overview: execution ended", "rollout", id, "state", res.State, "err", err)
		}()

		return nil
	}

	srv, err := overview.New(overview.Options{
		Store: st, Config: cfg, Inventory: inv, Executor: exec, Logger: log, Secure: cfg.TLS != nil, Facts: facts,
	})
	if err != nil {
		return nil, bad(err)
	}

	return srv, nil
}

func newOverviewTokenCmd() *cobra.Command {
	var name, role string

	cmd := &cobra.Command{
		Use:   "token",
		Short: "Print a new random login token and the config entry holding its SHA-256",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := make([]byte, 24)
			rand.Read(b) //nolint:errcheck // crypto/rand.Read never fails

			tok := hex.EncodeToString(b)
			sum := sha256.Sum256([]byte(tok))
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "token (give it to the user; it is not stored anywhere): %s\n", tok)
			fmt.Fprintf(w, "config entry:\n  - name: %s\n    role: %s\n    tokenSHA256: %s\n", name, role, hex.EncodeToString(sum[:]))

			return nil
		},
	}

	cmd.Flags().StringVar(&name, "name", "operator", "user name for the config entry")
	cmd.Flags().StringVar(&role, "role", overview.RoleOperator, "role for the config entry: operator or read-only")

	return cmd
}
