package addonscmd

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/standin"
)

func newBumpCommand() *cobra.Command {
	var (
		c       common
		version string
		tags    []string
		mirrors []string
		useSI   bool
		source  string
		dryRun  bool
	)

	cmd := &cobra.Command{
		Use:   "bump NAME",
		Short: "Set an add-on's chart version and re-pin chart and image digests",
		Long: `bump fetches the chart at the new version, resolves every image tag to the
digest of its linux/amd64 manifest, renders the chart to check it references
only the listed images, and rewrites addon.yaml (comments kept).

Image tags follow the new chart's defaults when the chart names the same
repository at the image's values key; otherwise they stay unless --tag sets
them.

Run it where the upstream registries are reachable (pins.source: upstream),
or against a mirror. --standin starts the project's stand-in mirror in
process and records pins.source: standin: the lab's way to exercise the
same code offline.`,
		Example: `  # production: real registries
  imagectl addons bump cilium --version 1.18.1

  # air-gapped: a site mirror holding the upstream content
  imagectl addons bump cilium --version 1.18.1 \
      --mirror quay.io=registry.site.example/quay.io \
      --mirror helm.cilium.io=charts.site.example/helm.cilium.io

  # lab, offline: the stand-in mirror
  imagectl addons bump cilium --version 1.18.1 --standin

  # a sidecar image the chart does not name
  imagectl addons bump thanos --tag thanos=v0.39.2 --standin --dry-run -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.check(); err != nil {
				return err
			}

			m, err := addons.ParseMirror(mirrors)
			if err != nil {
				return badInput(err)
			}

			tagMap := map[string]string{}

			for _, t := range tags {
				n, v, ok := strings.Cut(t, "=")
				if !ok || n == "" || v == "" {
					return badInput(fmt.Errorf("--tag %q: want image-name=tag", t))
				}

				tagMap[n] = v
			}

			if source == "" {
				source = addons.SourceUpstream
				if useSI {
					source = addons.SourceStandin
				}
			}

			if useSI && source != addons.SourceStandin {
				return badInput(errors.New("--standin pins from stand-ins: --source must be standin"))
			}

			note := "imagectl addons " + strings.Join(append([]string{"bump"}, flagsForNote(cmd, args)...), " ")

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

			res, err := addons.Bump(cmd.Context(), filepath.Join(c.dir, args[0]), addons.BumpOptions{
				Version: version, Tags: tagMap, Mirror: m, Source: source, Note: note, DryRun: dryRun,
			})
			if err != nil {
				var fe *addons.FieldError
				if errors.As(err, &fe) {
					return badInput(err)
				}

				return err
			}

			out := cmd.OutOrStdout()

			if c.output == "json" {
				return writeJSON(out, res)
			}

			fmt.Fprintf(out, "%s: chart %s -> %s (%s)\n", res.Addon, res.Chart.OldVersion, res.Chart.NewVersion, res.Chart.NewDigest)

			for _, i := range res.Images {
				fmt.Fprintf(out, "  %-16s %s -> %s@%s\n", i.Name, i.OldRef, i.NewRef, i.NewDigest)
			}

			if res.Written {
				fmt.Fprintf(out, "wrote %s\n", filepath.Join(c.dir, args[0], addons.SpecFile))
			} else {
				fmt.Fprintln(out, "dry run: nothing written")
			}

			return nil
		},
	}

	c.flags(cmd)
	cmd.Flags().StringVar(&version, "version", "", "new chart version (default: re-pin the current one)")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "set an image tag: image-name=tag (repeatable)")
	cmd.Flags().StringArrayVar(&mirrors, "mirror", nil, "fetch an upstream host from a mirror: host=target[/prefix] (repeatable)")
	cmd.Flags().BoolVar(&useSI, "standin", false, "fetch from the project's in-process stand-in mirror (offline lab)")
	cmd.Flags().StringVar(&source, "source", "", "pins.source to record: upstream or standin (default from --standin)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "resolve and check, but do not rewrite addon.yaml")

	return cmd
}

// flagsForNote records the reproducing command in pins.note, without
// --dir and -o which do not change the pins.
func flagsForNote(cmd *cobra.Command, args []string) []string {
	out := append([]string{}, args...)

	for _, n := range []string{"version", "tag", "mirror", "standin"} {
		f := cmd.Flags().Lookup(n)
		if f == nil || !f.Changed {
			continue
		}

		if n == "standin" {
			out = append(out, "--standin")

			continue
		}

		if sv, ok := f.Value.(interface{ GetSlice() []string }); ok {
			for _, v := range sv.GetSlice() {
				out = append(out, "--"+n+"="+v)
			}

			continue
		}

		out = append(out, "--"+n+"="+f.Value.String())
	}

	return out
}
