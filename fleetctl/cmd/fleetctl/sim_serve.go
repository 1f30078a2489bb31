package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/site"
)

// maxServed keeps sim serve within what one machine's file descriptors and
// TLS handshakes comfortably carry.
const maxServed = 2000

func newSimServeCmd() *cobra.Command {
	var dir string

	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a SIMULATED fleet's nodes over the Talos machine API (mTLS, 127.0.0.1)",
		Long: `Starts one machine API server per simulated node on 127.0.0.1 (Version,
Upgrade, Rollback, Reboot, ServiceList) with a server certificate from the
fleet's machine CA, and writes DIR/served/inventory.yaml pointing at them with a
talosconfig. Rollouts against that inventory use the real talos driver.
Runs until interrupted.`,
		Example: `  fleetctl sim init --dir /tmp/sim --clusters 100 --nodes-per-cluster 3
  fleetctl sim serve --dir /tmp/sim &
  fleetctl rollout start --db /tmp/sim/served.db --inventory /tmp/sim/served/inventory.yaml --plan /tmp/sim/plan.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return bad(errors.New("--dir is required"))
			}

			inv, err := loadInventory(filepath.Join(dir, "inventory.yaml"))
			if err != nil {
				return err
			}

			if inv.NodeCount() > maxServed {
				return bad(fmt.Errorf("%d nodes: sim serve handles at most %d (use --driver sim for larger fleets)", inv.NodeCount(), maxServed))
			}

			fleet, err := sim.OpenDir(dir)
			if err != nil {
				return err
			}
			defer fleet.Close()

			served := filepath.Join(dir, "served")

			bundle, err := loadOrCreateCredentials(served)
			if err != nil {
				return err
			}

			tlsCfg, err := site.ServerTLS(bundle, []net.IP{net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}

			var keys []string

			for _, c := range inv.Clusters {
				for _, n := range c.Nodes {
					keys = append(keys, sim.Key(c.Name, n.Name))
				}
			}

			srv, err := sim.Serve(fleet, keys, tlsCfg)
			if err != nil {
				return err
			}
			defer srv.Close()

			out := inventory.File{Sites: inv.Sites}

			for _, c := range inv.Clusters {
				c.Talosconfig = site.TalosconfigFile
				c.Labels = map[string]string{simulatedLabel: "true"}
				for i := range c.Nodes {
					c.Nodes[i].Endpoint = srv.Endpoints[sim.Key(c.Name, c.Nodes[i].Name)]
				}

				out.Clusters = append(out.Clusters, c)
			}

			data, err := yaml.Marshal(out)
			if err != nil {
				return err
			}

			path := filepath.Join(served, "inventory.yaml")
			if err := os.WriteFile(path, append([]byte("# "+sim.Label+" nodes served by fleetctl sim serve\n"), data...), 0o644); err != nil {
				return err
			}

			banner(cmd.OutOrStdout(), true)
			fmt.Fprintf(cmd.OutOrStdout(), "serving %d %s nodes on 127.0.0.1; inventory: %s\n", len(keys), sim.Label, path)

			<-cmd.Context().Done()

			return nil
		},
	}

	cmd.Flags().StringVar(&dir, "dir", "", "simulated fleet directory (from sim init)")

	return cmd
}

// simulatedLabel marks clusters served by sim serve, so rollouts against them
// are labelled SIMULATED although they use the real driver.
const simulatedLabel = "labfleet.io/simulated"

func servedBySim(inv *inventory.Inventory) bool {
	for _, c := range inv.Clusters {
		if c.Labels[simulatedLabel] == "true" {
			return true
		}
	}

	return false
}

func loadOrCreateCredentials(dir string) (*secrets.Bundle, error) {
	if b, err := secrets.LoadBundle(filepath.Join(dir, site.SecretsFile)); err == nil {
		b.Clock = secrets.NewClock()

		return b, nil
	}

	creds, err := site.Generate("sim", []string{"127.0.0.1"})
	if err != nil {
		return nil, err
	}

	if err := creds.Write(dir, true); err != nil {
		return nil, err
	}

	return creds.Bundle, nil
}
