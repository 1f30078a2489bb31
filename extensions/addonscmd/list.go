package addonscmd

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/extensions/addons"
)

func newListCommand() *cobra.Command {
	var c common

	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the add-ons with their pinned chart versions and digests",
		Example: `  imagectl addons list
  imagectl addons list --dir extensions -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := c.check(); err != nil {
				return err
			}

			list, err := loadDir(c.dir)
			if err != nil {
				return badInput(err)
			}

			out := cmd.OutOrStdout()

			if c.output == "json" {
				return writeJSON(out, list)
			}

			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCHART\tVERSION\tCHART DIGEST\tIMAGES\tPINS")

			for _, a := range list {
				digest := short(a.Chart.Digest)
				if a.Chart.Local != "" {
					digest = "(local)"
				}

				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", a.Name, a.Chart.Name, a.Chart.Version, digest, len(a.Images), a.Pins.Source)
			}

			return tw.Flush()
		},
	}

	c.flags(cmd)

	return cmd
}

// loadDir loads every add-on directory under root, sorted by name.
func loadDir(root string) ([]*addons.Addon, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("reading add-ons: %w", err)
	}

	var names []string

	for _, e := range entries {
		if !e.IsDir() {
			continue
		}

		if _, err := os.Stat(filepath.Join(root, e.Name(), addons.SpecFile)); err == nil {
			names = append(names, e.Name())
		}
	}

	if len(names) == 0 {
		return nil, fmt.Errorf("%s: no add-ons (directories with %s)", root, addons.SpecFile)
	}

	sort.Strings(names)

	return addons.LoadAll(root, names)
}

func short(d string) string {
	if len(d) > 19 {
		return d[:19]
	}

	return d
}
