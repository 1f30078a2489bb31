// Package addonscmd is imagectl's "addons" command: list, show and bump the
// pinned add-ons in extensions/.
package addonscmd

import (
	"errors"

	"github.com/spf13/cobra"
)

// ErrUsage is matched (errors.Is) by errors caused by bad input: flags,
// add-on definitions, site values. imagectl maps it to exit code 2.
var ErrUsage = errors.New("bad input")

type usageError struct{ err error }

func (e usageError) Error() string   { return e.err.Error() }
func (e usageError) Unwrap() []error { return []error{ErrUsage, e.err} }

func badInput(err error) error {
	if err == nil {
		return nil
	}

	return usageError{err: err}
}

type common struct {
	dir    string
	output string
}

func (c *common) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.dir, "dir", "extensions", "add-ons root directory (one sub-directory per add-on)")
	cmd.Flags().StringVarP(&c.output, "output", "o", "text", "output format: text or json")
}

func (c *common) check() error {
	if c.output != "text" && c.output != "json" {
		return badInput(errors.New(`-o: allowed values are "text" and "json"`))
	}

	return nil
}

// NewCommand returns the "addons" command with its verbs.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "addons",
		Short: "List, show and re-pin the add-ons baked into images",
		Long: `The add-ons (Cilium, MetalLB, the OpenTelemetry collector, Prometheus with
a Thanos sidecar) live in extensions/<name>/addon.yaml: an upstream Helm
chart and container images, each pinned by digest. Images bake exactly
these pins: the rendered manifests reference them and the image cache
holds them.

Pins carry a source: "upstream" (computed against the real registries) or
"standin" (computed against the project's stand-in mirror, used where the
real registries are unreachable). See extensions/README.md.`,
	}

	cmd.AddCommand(newListCommand(), newShowCommand(), newBumpCommand(), newSitePatchCommand())

	return cmd
}
