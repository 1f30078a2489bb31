package addonscmd

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/extensions/addons"
)

func newShowCommand() *cobra.Command {
	var c common

	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one add-on: chart, pinned images, site parameters",
		Example: `  imagectl addons show cilium
  imagectl addons show thanos -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := c.check(); err != nil {
				return err
			}

			a, err := addons.Load(filepath.Join(c.dir, args[0]))
			if err != nil {
				return badInput(err)
			}

			out := cmd.OutOrStdout()

			if c.output == "json" {
				return writeJSON(out, a)
			}

			fmt.Fprintf(out, "name:        %s\n", a.Name)
			fmt.Fprintf(out, "description: %s\n", a.Description)
			fmt.Fprintf(out, "namespace:   %s\n", a.Namespace)
			if a.Chart.Local != "" {
				fmt.Fprintf(out, "chart:       %s %s, local: %s\n", a.Chart.Name, a.Chart.Version, filepath.Join(a.Dir, a.Chart.Local))
			} else {
				fmt.Fprintf(out, "chart:       %s %s from %s\n", a.Chart.Name, a.Chart.Version, a.Chart.Repository)
				fmt.Fprintf(out, "  digest:    %s\n", a.Chart.Digest)
			}
			fmt.Fprintf(out, "pins:        %s %s\n", a.Pins.Source, a.Pins.Note)
			fmt.Fprintln(out, "images:")

			for _, img := range a.Images {
				if img.Build != "" {
					fmt.Fprintf(out, "  %-16s %s (built from %s by the bake; digest computed then)\n", img.Name, img.Ref, img.Build)

					continue
				}

				fmt.Fprintf(out, "  %-16s %s@%s\n", img.Name, img.Ref, img.Digest)
			}

			if len(a.Parameters) > 0 {
				fmt.Fprintln(out, "site parameters:")

				for _, p := range a.Parameters {
					fmt.Fprintf(out, "  %-22s -> %s  (%s)\n", p.Site, p.Values, p.Description)
				}
			}

			return nil
		},
	}

	c.flags(cmd)

	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")

	return enc.Encode(v)
}
