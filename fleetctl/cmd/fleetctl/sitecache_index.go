package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
)

func newSiteCacheIndexCmd() *cobra.Command {
	var insecure bool

	cmd := &cobra.Command{
		Use:   "index IMAGE",
		Short: "Publish the chunk index of every layer of a pushed image, for site caches",
		Long: `Reads IMAGE (already pushed to the regional registry), cuts each layer blob
into content-defined chunks (restic's Rabin chunker, 64 KiB..1 MiB, 256 KiB
on average) and pushes each layer's chunk index next to the image, in the
same repository, as an OCI artifact tagged

  sha256-<layer hex>.chunks

(config media type application/vnd.labfleet.chunkindex.config.v1+json, one
layer of application/vnd.labfleet.chunkindex.v1+json). Site caches look it up
by the blob digest a node asks for; a layer without an index is fetched whole.
Run it once per release, after the push (layers already indexed are skipped).
Registry credentials come from the Docker config, as for crane.

The index is not trusted by the caches: each chunk is checked against its
digest and each rebuilt layer against the layer digest.`,
		Example: `  fleetctl site-cache index registry.region.example:5000/labos/installer:v1.2.1
  fleetctl site-cache index --insecure 10.40.0.1:5000/labos/installer@sha256:... -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			var opts []name.Option
			if insecure {
				opts = append(opts, name.Insecure)
			}

			ref, err := name.ParseReference(args[0], opts...)
			if err != nil {
				return bad(fmt.Errorf("IMAGE %q: %w", args[0], err))
			}

			pub, err := chunks.Publish(cmd.Context(), ref, remote.WithAuthFromKeychain(authn.DefaultKeychain))
			if err != nil {
				return err
			}

			if asJSON {
				return printJSON(cmd.OutOrStdout(), pub)
			}

			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LAYER\tSIZE\tCHUNKS\tINDEX TAG\t")

			for _, p := range pub {
				state := p.Tag
				if p.Reused {
					state += " (already published)"
				}

				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t\n", p.Blob, p.Size, p.Chunks, state)
			}

			return tw.Flush()
		},
	}

	cmd.Flags().BoolVar(&insecure, "insecure", false, "plain HTTP to the registry (lab registries)")

	return cmd
}
