package main

import "github.com/spf13/cobra"

func newSiteCacheCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "site-cache",
		Short: "Run a site's OCI pull-through cache, and publish the chunk indexes it uses",
		Long: `A site cache sits at a site, between the site's nodes and the regional
registry, on the site's thin WAN link. Nodes pull through it (Talos:
machine.registries.mirrors, or a RegistryMirrorConfig document, pointing the
regional registry's name at the cache), so each blob crosses the WAN once
however many nodes the site has. Every manifest and blob is checked against
its digest before it is stored or served.

When the regional registry also holds a chunk index for a layer (published
by 'fleetctl site-cache index IMAGE' after the image is pushed), the cache
fetches only the chunks of that layer it does not already hold in any blob
of an earlier release, and rebuilds the layer byte for byte: a patch release
moves a few percent of the image.`,
		Example: `  fleetctl site-cache index registry.region.example:5000/labos/installer:v1.2.1
  fleetctl site-cache serve --config site-cache.yaml`,
	}

	cmd.AddCommand(newSiteCacheServeCmd(), newSiteCacheIndexCmd())

	return cmd
}
