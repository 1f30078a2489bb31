package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newGenConfigCommand) }

func newGenConfigCommand(_ *globals) *cobra.Command {
	o := configOptions{}

	var out string

	cmd := &cobra.Command{
		Use:   "gen-config --keys DIR --out FILE",
		Short: "Write a node's machine config for the fleet hub to deliver (like talosctl gen config --with-secrets)",
		Long: `gen-config generates the machine config a lab node receives in maintenance
mode from a keys folder's secrets bundle and writes it to FILE (mode 0600,
never over an existing file). It is for the fleet hub's configDir
(CLUSTER/ROLE.yaml), which hands it to nodes through their SideroLink
tunnel: the config carries the machine CA key, so FILE belongs with the
hub's other secrets, never in an image. 'labctl up --keys' delivers the
same config directly, without writing it.`,
		Example: `  labctl gen-config --keys _out/keys --out _out/demo-hub/configs/lab/controlplane.yaml`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.keys == "" || out == "" {
				return usageErr("gen-config needs --keys DIR and --out FILE")
			}

			data, err := o.load()
			if err != nil {
				return err
			}

			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if errors.Is(err, os.ErrExist) {
				return usageErr("--out %s exists: remove it first (a config in use is not overwritten)", out)
			}

			if err != nil {
				return usageErr("--out: %v", err)
			}

			if _, err := f.Write(data); err != nil {
				f.Close()
				os.Remove(out)

				return fmt.Errorf("writing %s: %w", out, err)
			}

			if err := f.Close(); err != nil {
				os.Remove(out)

				return fmt.Errorf("writing %s: %w", out, err)
			}

			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (%s, cluster %s; mode 0600: it holds the machine CA key)\n", out, o.role, o.cluster)

			return nil
		},
	}

	f := cmd.Flags()
	f.StringVar(&o.keys, "keys", "", "keys folder holding secrets.yaml (imagectl keys generate)")
	f.StringVar(&o.cluster, "cluster-name", "lab", "cluster name (images/lab.yaml's cluster.name)")
	f.StringVar(&o.endpoint, "endpoint", "https://10.0.2.15:6443", "control plane endpoint")
	f.StringVar(&o.role, "role", "controlplane", "machine type: controlplane or worker")
	f.StringVar(&out, "out", "", "file to write (must not exist)")

	return cmd
}
