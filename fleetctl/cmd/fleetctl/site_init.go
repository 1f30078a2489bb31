package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/site"
)

func newSiteCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "site", Short: "Manage per-cluster credentials"}
	cmd.AddCommand(newSiteInitCmd())

	return cmd
}

func newSiteInitCmd() *cobra.Command {
	var (
		cluster   string
		endpoints []string
		dir       string
		force     bool
	)

	cmd := &cobra.Command{
		Use:   "init",
		Short: "Generate a cluster's secrets bundle and talosconfig",
		Long: `Generates a machinery secrets bundle (machine CA and the cluster's other
secrets) and a talosconfig with an os:admin client certificate signed by the
machine CA. Point the inventory's cluster.talosconfig at the talosconfig;
keep secrets.yaml safe (it is what node configurations are generated from).`,
		Example: `  fleetctl site init --cluster ber-1-a --endpoint 10.0.0.10 --endpoint 10.0.0.11 --dir creds/ber-1-a`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			if cluster == "" || dir == "" {
				return bad(fmt.Errorf("--cluster and --dir are required"))
			}

			creds, err := site.Generate(cluster, endpoints)
			if err != nil {
				return err
			}

			if err := creds.Write(dir, force); err != nil {
				return err
			}

			out := map[string]string{
				"cluster":     cluster,
				"secrets":     dir + "/" + site.SecretsFile,
				"talosconfig": dir + "/" + site.TalosconfigFile,
			}

			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}

			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s for cluster %s\n", out["secrets"], out["talosconfig"], cluster)

			return nil
		},
	}

	cmd.Flags().StringVar(&cluster, "cluster", "", "cluster name (the talosconfig context name)")
	cmd.Flags().StringSliceVar(&endpoints, "endpoint", nil, "machine API endpoint(s) for the talosconfig (repeatable)")
	cmd.Flags().StringVar(&dir, "dir", "", "directory to write secrets.yaml and talosconfig into (mode 0600)")
	cmd.Flags().BoolVar(&force, "force", false, "replace existing credentials")

	return cmd
}
