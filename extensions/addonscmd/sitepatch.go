package addonscmd

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/extensions"
	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/standin"
)

func newSitePatchCommand() *cobra.Command {
	var (
		dir     string
		site    string
		out     string
		mirrors []string
		useSI   bool
		names   []string
	)

	cmd := &cobra.Command{
		Use:   "site-patch --site FILE",
		Short: "Render the per-site machine config patch from a site entry",
		Long: `site-patch renders the add-ons that take site parameters (MetalLB address
pools, Thanos external labels and object storage secret, the OpenTelemetry
exporter endpoint) with a site entry's values, and prints a Talos machine
config patch whose KubeInlineManifestConfig documents replace the image's
default manifests of those add-ons. Apply it with the node's config
(talosctl --config-patch, or fleetctl's site tooling).

Missing or malformed site values are an error naming the field (exit 2).`,
		Example: `  imagectl addons site-patch --site sites/fra1.yaml > fra1-patch.yaml
  imagectl addons site-patch --site sites/fra1.yaml --standin -O fra1-patch.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if site == "" {
				return badInput(errors.New("--site is required: a YAML site entry (name, region, metallb, otel, thanos)"))
			}

			sv, err := addons.LoadSite(site)
			if err != nil {
				return badInput(err)
			}

			m, err := addons.ParseMirror(mirrors)
			if err != nil {
				return badInput(err)
			}

			if useSI {
				s, err := standin.Start(cmd.Context(), standin.DefaultCatalog())
				if err != nil {
					return err
				}
				defer s.Close() //nolint:errcheck

				for k, v := range s.Mirror {
					if _, set := m[k]; !set {
						m[k] = v
					}
				}
			}

			patch, err := extensions.SitePatch(cmd.Context(), extensions.SitePatchOptions{
				Dir: dir, Addons: names, Mirror: m, Site: sv,
			})
			if err != nil {
				var fe *addons.FieldError
				if errors.As(err, &fe) {
					return badInput(err)
				}

				return err
			}

			if out == "" || out == "-" {
				_, err = cmd.OutOrStdout().Write(patch)

				return err
			}

			if err := os.WriteFile(out, patch, 0o644); err != nil {
				return fmt.Errorf("writing patch: %w", err)
			}

			return nil
		},
	}

	cmd.Flags().StringVar(&dir, "dir", "extensions", "add-ons root directory")
	cmd.Flags().StringVar(&site, "site", "", "site entry (YAML)")
	cmd.Flags().StringVarP(&out, "out", "O", "", "write the patch to this file instead of stdout")
	cmd.Flags().StringArrayVar(&mirrors, "mirror", nil, "fetch an upstream host from a mirror: host=target[/prefix] (repeatable)")
	cmd.Flags().BoolVar(&useSI, "standin", false, "fetch from the project's in-process stand-in mirror (offline lab)")
	cmd.Flags().StringSliceVar(&names, "addons", nil, "add-ons to consider (default: cilium,metallb,otel-collector,thanos)")

	return cmd
}
