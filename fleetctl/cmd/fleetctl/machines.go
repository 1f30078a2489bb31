package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/store"
)

func newMachinesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "machines",
		Short: "Machines that enrolled with the hub: list, show, accept, reject",
	}

	cmd.AddCommand(newMachinesLsCmd(), newMachinesShowCmd(), newMachinesDecideCmd(registry.StateAccepted), newMachinesDecideCmd(registry.StateRejected))

	return cmd
}

func seenAgo(t time.Time) string {
	if t.IsZero() {
		return "-"
	}

	return time.Since(t).Round(time.Second).String() + " ago"
}

func newMachinesLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Short:   "List enrolled machines",
		Example: `  fleetctl machines ls --db fleet.db -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, asJSON, done, err := openRegistry()
			if err != nil {
				return err
			}
			defer done()

			ms, err := reg.Machines(cmd.Context())
			if err != nil {
				return err
			}

			if asJSON {
				if ms == nil {
					ms = []registry.Machine{}
				}

				return printJSON(cmd.OutOrStdout(), ms)
			}

			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "UUID\tSITE\tSTATE\tCLUSTER\tROLE\tTUNNEL ADDRESS\tVIA\tTALOS\tLAST SEEN\tCONFIG")

			for _, m := range ms {
				cfg := "-"
				if !m.ConfigApplied.IsZero() {
					cfg = "applied"
				} else if m.LastError != "" {
					cfg = "failed"
				}

				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.UUID, m.Site, m.State, dash(m.Cluster), dash(m.Role),
					m.TunnelAddress, m.Transport, dash(m.TalosVersion), seenAgo(m.LastSeen), cfg)
			}

			return tw.Flush()
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}

	return s
}

func newMachinesShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show UUID|TUNNEL-ADDRESS",
		Short: "Show one machine with its last events",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, asJSON, done, err := openRegistry()
			if err != nil {
				return err
			}
			defer done()

			m, err := resolveMachine(cmd.Context(), reg, args[0])
			if err != nil {
				return err
			}

			evs, err := reg.Events(cmd.Context(), m.UUID, 10)
			if err != nil {
				return err
			}

			if asJSON {
				if evs == nil {
					evs = []registry.Event{}
				}

				return printJSON(cmd.OutOrStdout(), struct {
					registry.Machine
					LastEvents []registry.Event `json:"lastEvents"`
				}{m, evs})
			}

			w := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)

			for _, kv := range [][2]string{
				{"uuid", m.UUID}, {"site", m.Site}, {"state", m.State}, {"cluster", dash(m.Cluster)}, {"role", dash(m.Role)},
				{"decided by", dash(m.DecidedBy)}, {"tunnel address", m.TunnelAddress}, {"transport", m.Transport},
				{"endpoint", dash(m.Endpoint)}, {"join token", m.TokenID},
				{"first seen", m.FirstSeen.Local().Format(time.RFC3339)}, {"last seen", seenAgo(m.LastSeen)},
				{"talos version", dash(m.TalosVersion)}, {"image version", dash(m.ImageVersion)},
				{"secure boot", dash(m.SecureBoot)}, {"disk encryption", dash(m.DiskEncryption)},
				{"config applied", timeOrDash(m.ConfigApplied)}, {"last error", dash(m.LastError)},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}

			if err := tw.Flush(); err != nil {
				return err
			}

			fmt.Fprintln(w, "last events:")

			for _, e := range evs {
				fmt.Fprintf(w, "  %s  %s  %s\n", e.At.Local().Format(time.RFC3339), e.Type, e.Payload)
			}

			return nil
		},
	}
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}

	return t.Local().Format(time.RFC3339)
}

func newMachinesDecideCmd(state string) *cobra.Command {
	var cluster, role string

	use, short := "accept UUID", "Accept a machine into a cluster: the hub then hands it that cluster's configuration"
	if state == registry.StateRejected {
		use, short = "reject UUID", "Reject a machine: it never gets a configuration and may not enroll again"
	}

	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Example: `  fleetctl machines accept 4c4c4544-0042-3510-8052-b4c04f4b4e32 --cluster berlin-1 --role worker
  fleetctl machines reject 4c4c4544-0042-3510-8052-b4c04f4b4e32`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			if state == registry.StateAccepted {
				if cluster == "" || role == "" {
					return bad(errors.New("accept needs --cluster and --role"))
				}

				if role != "controlplane" && role != "worker" {
					return bad(fmt.Errorf("--role %q: want controlplane or worker", role))
				}
			}

			st, err := openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			m, err := registry.New(st.DB()).Decide(cmd.Context(), args[0], state, cluster, role, store.Actor())
			if err != nil {
				if errors.Is(err, registry.ErrNotFound) {
					return bad(err)
				}

				return err
			}

			if asJSON {
				return printJSON(cmd.OutOrStdout(), m)
			}

			if state == registry.StateAccepted {
				fmt.Fprintf(cmd.OutOrStdout(), "accepted %s into %s as %s; the hub applies the configuration when its link is up\n", m.UUID, m.Cluster, m.Role)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "rejected %s\n", m.UUID)
			}

			return nil
		},
	}

	if state == registry.StateAccepted {
		cmd.Flags().StringVar(&cluster, "cluster", "", "cluster the machine joins (its configuration is CONFIGDIR/CLUSTER/ROLE.yaml)")
		cmd.Flags().StringVar(&role, "role", "", "controlplane or worker")
	}

	return cmd
}
