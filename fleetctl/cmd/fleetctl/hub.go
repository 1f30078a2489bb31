package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/overview"
	"github.com/labfleet/labfleet/fleetctl/store"
)

func newHubCmd() *cobra.Command {
	var (
		cfgPath string
		over    hub.Config
		pubEPs  []string

		ovCfgPath, ovListen, ovInv string
	)

	cmd := &cobra.Command{
		Use:   "hub",
		Short: "Run the SideroLink hub: nodes dial out to it, enroll, send events and logs",
		Long: `fleetctl hub runs the management side of SideroLink. Nodes behind firewalls
that allow no inbound port dial out to it: they call the provisioning API (TCP,
--api-listen) with their per-site join token, then bring up a WireGuard link over
UDP (--wireguard-listen) or tunnelled over the same TCP connection where UDP is
blocked. The hub records every machine in the database (fleetctl machines),
keeps their events and kernel logs (fleetctl events / logs), and hands a machine
configuration only to machines the inventory lists by UUID or an operator
accepted. WireGuard runs in userspace on a TUN device: no kernel module needed,
but root (CAP_NET_ADMIN) is.

With --overview-config the hub also serves the fleet overview page (the same
page as 'fleetctl overview') on its own port, with what the nodes reported
through their links: version, Secure Boot, encryption, last seen, events and
kernel log.

Flags override the --config file field by field. SIGINT/SIGTERM stop it
gracefully; nodes reconnect by themselves when it comes back.`,
		Example: `  fleetctl hub --db fleet.db --config hub.yaml
  fleetctl hub --db fleet.db --api-listen :8099 --wireguard-listen :50180 --public-endpoint hub.example.org:50180
  fleetctl hub token create berlin --db fleet.db
  fleetctl hub --db fleet.db --config hub.yaml --overview-config overview.yaml --overview-listen :8443`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := hub.Defaults()

			if cfgPath != "" {
				var err error
				if cfg, err = hub.LoadConfig(cfgPath); err != nil {
					return bad(err)
				}
			}

			f := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if f.Changed(name) {
					*dst = v
				}
			}

			set("api-listen", &cfg.APIListen, over.APIListen)
			set("wireguard-listen", &cfg.WireGuardListen, over.WireGuardListen)
			set("prefix", &cfg.Prefix, over.Prefix)
			set("interface", &cfg.Interface, over.Interface)
			set("inventory-uuids", &cfg.Inventory, over.Inventory)
			set("config-dir", &cfg.ConfigDir, over.ConfigDir)
			set("tls-cert", &cfg.TLSCert, over.TLSCert)
			set("tls-key", &cfg.TLSKey, over.TLSKey)

			if f.Changed("public-endpoint") {
				cfg.PublicEndpoints = pubEPs
			}

			if err := cfg.Validate(); err != nil {
				return bad(err)
			}

			st, err := openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			reg := registry.New(st.DB())

			h, err := hub.New(cfg, reg, logger(false), hub.Options{})
			if err != nil {
				return bad(err)
			}

			if ovCfgPath == "" {
				return h.Run(cmd.Context())
			}

			return runHubWithOverview(cmd, h, st, reg, ovCfgPath, ovListen, ovInv)
		},
	}

	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "hub configuration (YAML, version v1alpha1; see fleetctl/README.md)")
	f.StringVar(&over.APIListen, "api-listen", hub.DefaultAPIListen, "provisioning API and gRPC tunnel (TCP host:port)")
	f.StringVar(&over.WireGuardListen, "wireguard-listen", hub.DefaultWireGuardListen, "WireGuard endpoint (UDP host:port)")
	f.StringSliceVar(&pubEPs, "public-endpoint", nil, "host:port nodes send WireGuard packets to (default: the address they reached the API on)")
	f.StringVar(&over.Prefix, "prefix", hub.DefaultPrefix, "tunnel prefix (IPv6 ULA, /64 or larger)")
	f.StringVar(&over.Interface, "interface", hub.DefaultInterface, "name of the TUN device")
	f.StringVar(&over.Inventory, "inventory-uuids", "", "YAML list of machines by UUID that get their configuration without being accepted")
	f.StringVar(&over.TLSCert, "tls-cert", "", "PEM certificate: serve the API over TLS (nodes use https://)")
	f.StringVar(&over.TLSKey, "tls-key", "", "PEM key of --tls-cert")
	f.StringVar(&over.ConfigDir, "config-dir", "", "machine configurations to hand out: DIR/CLUSTER/ROLE.yaml")
	f.StringVar(&ovCfgPath, "overview-config", "", "also serve the fleet overview page with this config (users, roles, TLS; see fleetctl overview)")
	f.StringVar(&ovListen, "overview-listen", "127.0.0.1:8080", "address of the overview page (its own port; TLS required unless loopback)")
	f.StringVar(&ovInv, "overview-inventory", "", "inventory for the overview: also show clusters no rollout selected yet")

	cmd.AddCommand(newHubTokenCmd())

	return cmd
}

// runHubWithOverview runs the hub and the overview page side by side; the
// first to fail stops the other, and both stop on SIGINT/SIGTERM.
func runHubWithOverview(cmd *cobra.Command, h *hub.Hub, st *store.Store, reg *registry.Registry, cfgPath, listen, invPath string) error {
	cfg, err := overview.LoadConfig(cfgPath)
	if err != nil {
		return bad(err)
	}

	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()

	srv, err := newOverviewServer(ctx, st, cfg, invPath, &hub.Facts{Registry: reg})
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, url, err := overview.Listen(listen, cfg)
	if err != nil {
		return bad(fmt.Errorf("--overview-listen: %w", err))
	}

	fmt.Fprintf(cmd.OutOrStdout(), "fleet overview: %s\n", url)

	ovDone := make(chan error, 1)

	go func() {
		err := overview.Serve(ctx, ln, srv)
		cancel()
		ovDone <- err
	}()

	hubErr := h.Run(ctx)
	cancel()

	if ovErr := <-ovDone; hubErr == nil && ovErr != nil && !errors.Is(ovErr, context.Canceled) {
		return fmt.Errorf("overview: %w", ovErr)
	}

	return hubErr
}

func newHubTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage per-site join tokens (create, ls, revoke, rotate)",
		Long: `A join token lets a machine of a site be seen by the hub: enroll, bring up its
link, send events and logs. It does not give it a configuration: that needs
its UUID in the inventory or 'fleetctl machines accept'. Tokens are stored
hashed; the secret is printed once, at creation, and never again.`,
	}

	cmd.AddCommand(newHubTokenCreateCmd(false), newHubTokenCreateCmd(true), newHubTokenLsCmd(), newHubTokenRevokeCmd())

	return cmd
}

// tokenOut is what create and rotate print; Secret appears only here.
type tokenOut struct {
	registry.Token
	Secret  string   `json:"secret"`
	Revoked []string `json:"revoked,omitempty"`
	// KernelArgs is how a Talos image carries it (SideroLink kernel argument).
	KernelArgs string `json:"kernelArgs"`
}

func newHubTokenCreateCmd(rotate bool) *cobra.Command {
	var (
		hubAddr string
		tunnel  bool
		useTLS  bool
		prefix  string
	)

	use, short := "create SITE", "Create a join token for a site (printed once)"
	if rotate {
		use, short = "rotate SITE", "Create a new token for a site and revoke its other tokens at once"
	}

	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Example: `  fleetctl hub token create berlin --hub hub.example.org:8099
  fleetctl hub token rotate berlin --hub hub.example.org:8099 --grpc-tunnel -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			st, err := openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			reg := registry.New(st.DB())

			var out tokenOut
			if rotate {
				out.Secret, out.Token, out.Revoked, err = reg.RotateToken(cmd.Context(), args[0], store.Actor())
			} else {
				out.Secret, out.Token, err = reg.CreateToken(cmd.Context(), args[0], store.Actor())
			}

			if err != nil {
				return err
			}

			p, err := netip.ParsePrefix(prefix)
			if err != nil {
				return bad(fmt.Errorf("--prefix %q: %w", prefix, err))
			}

			out.KernelArgs = kernelArgs(hubAddr, p.Masked().Addr().Next(), out.Secret, tunnel, useTLS)

			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}

			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "token %s for site %s (shown once: store it now)\n%s\n", out.ID, out.Site, out.Secret)

			if len(out.Revoked) > 0 {
				fmt.Fprintf(w, "revoked: %s\n", strings.Join(out.Revoked, ", "))
			}

			fmt.Fprintf(w, "kernel arguments: %s\n", out.KernelArgs)

			return nil
		},
	}

	cmd.Flags().StringVar(&hubAddr, "hub", "HUB:8099", "host:port of the hub's API as the site's nodes reach it (for the printed kernel arguments)")
	cmd.Flags().StringVar(&prefix, "prefix", hub.DefaultPrefix, "the hub's tunnel prefix (for the event sink and log receiver addresses)")
	cmd.Flags().BoolVar(&useTLS, "tls", false, "the hub serves its API over TLS (--tls-cert): print an https:// URL")
	cmd.Flags().BoolVar(&tunnel, "grpc-tunnel", false, "the site blocks outbound UDP: tunnel WireGuard over the API's TCP connection")

	return cmd
}

// kernelArgs is the SideroLink kernel argument (and the event sink and log
// receiver arguments) a Talos node of the site boots with: https:// when the
// hub's API has TLS, else grpc:// (plain gRPC; Talos's name for insecure).
func kernelArgs(hubAddr string, serverAddr netip.Addr, secret string, tunnel, useTLS bool) string {
	scheme := "grpc"
	if useTLS {
		scheme = "https"
	}

	q := "jointoken=" + secret
	if tunnel {
		q += "&grpc_tunnel=true"
	}

	server := net.JoinHostPort(serverAddr.String(), "")

	return fmt.Sprintf("siderolink.api=%s://%s?%s talos.events.sink=%s%d talos.logging.kernel=tcp://%s%d",
		scheme, hubAddr, q, server, hub.DefaultEventSinkPort, server, hub.DefaultLogReceiverPort)
}

func newHubTokenLsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List join tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, asJSON, done, err := openRegistry()
			if err != nil {
				return err
			}
			defer done()

			toks, err := reg.Tokens(cmd.Context())
			if err != nil {
				return err
			}

			if asJSON {
				if toks == nil {
					toks = []registry.Token{}
				}

				return printJSON(cmd.OutOrStdout(), toks)
			}

			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TOKEN\tSITE\tCREATED\tBY\tSTATE")

			for _, t := range toks {
				state := "live"
				if t.Revoked() {
					state = fmt.Sprintf("revoked %s (%s)", t.RevokedAt.Local().Format(time.RFC3339), t.RevokeReason)
				}

				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Site, t.CreatedAt.Local().Format(time.RFC3339), t.CreatedBy, state)
			}

			return tw.Flush()
		},
	}
}

func newHubTokenRevokeCmd() *cobra.Command {
	var reason string

	cmd := &cobra.Command{
		Use:   "revoke TOKEN-ID",
		Short: "Revoke a join token: machines using it are refused when they next provision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openStore()
			if err != nil {
				return err
			}
			defer st.Close()

			if err := registry.New(st.DB()).RevokeToken(cmd.Context(), args[0], reason); err != nil {
				if errors.Is(err, registry.ErrNotFound) {
					return bad(err)
				}

				return err
			}

			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", args[0])

			return nil
		},
	}

	cmd.Flags().StringVar(&reason, "reason", "revoked by "+store.Actor(), "why (shown to the operator when a machine is refused)")

	return cmd
}
