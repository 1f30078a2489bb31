package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/fleetctl/sitecache"
	"github.com/labfleet/labfleet/fleetctl/sitecache/mirror"
)

func newSiteCacheServeCmd() *cobra.Command {
	var (
		cfgPath string
		over    sitecache.Config
		noDelta bool
	)

	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the site cache (registry API v2, read-only) until interrupted",
		Long: `Serves the read side of the OCI registry API (GET/HEAD of manifests and
blobs under /v2/) on --listen, fetching from --upstream what it does not hold.

  - One fetch per blob: nodes asking for the same blob at once wait on one
    download.
  - Verified: a manifest or blob whose bytes do not match its digest is
    refused and not stored; so is a chunk that does not match the index.
  - Durable: files are written to a temporary name, fsynced and renamed.
  - Capped: --bandwidth-limit paces the WAN side (e.g. 2Mbit); the LAN side
    is not limited.
  - Resumable: an interrupted download continues from the bytes and chunks
    already stored under --storage-dir, also after a restart.
  - Offline: when the upstream cannot be reached, a tag resolves to the
    digest it last had, so staged images stay pullable.
  - Bounded: --max-bytes caps the stored blobs; past it the least recently
    used blobs are evicted, never those of the --keep-manifests most
    recently used manifests (default 2) nor one being served.

Point the nodes at it. Talos machine config (v1alpha1):

  machine:
    registries:
      mirrors:
        registry.region.example:5000:
          endpoints: ["http://SITE-CACHE:5000"]

or, on Talos 1.14+, a RegistryMirrorConfig document with the same endpoint
(fleetctl hub adds that document itself for a site whose hub.yaml entry
names the cache: sites.SITE.registryMirrors).
The cache mirrors one upstream; containerd's ?ns= parameter is ignored.

Flags override the --config file field by field (fields: version, listen,
upstream, storageDir, bandwidthLimit, insecure, chunkDelta, maxBytes,
keepManifests; see
fleetctl/README.md). Logs are structured (logfmt) on stderr. SIGINT/SIGTERM
stop it gracefully: requests in flight get 10 s, finished chunks and partial
downloads are kept; the counters are printed on exit (-o json for JSON).`,
		Example: `  fleetctl site-cache serve --config /etc/labfleet/site-cache.yaml
  fleetctl site-cache serve --upstream 10.40.0.1:5000 --insecure --storage-dir /var/lib/site-cache --bandwidth-limit 2Mbit`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := jsonOut()
			if err != nil {
				return err
			}

			cfg := sitecache.Defaults()

			if cfgPath != "" {
				if cfg, err = sitecache.LoadConfig(cfgPath); err != nil {
					return bad(err)
				}
			}

			f := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if f.Changed(name) {
					*dst = v
				}
			}

			set("listen", &cfg.Listen, over.Listen)
			set("upstream", &cfg.Upstream, over.Upstream)
			set("storage-dir", &cfg.StorageDir, over.StorageDir)
			set("bandwidth-limit", &cfg.BandwidthLimit, over.BandwidthLimit)
			set("max-bytes", &cfg.MaxBytes, over.MaxBytes)

			if f.Changed("keep-manifests") {
				cfg.KeepManifests = over.KeepManifests
			}

			if f.Changed("insecure") {
				cfg.Insecure = over.Insecure
			}

			if f.Changed("no-chunk-delta") {
				d := !noDelta
				cfg.ChunkDelta = &d
			}

			if err := cfg.Validate(); err != nil {
				return bad(err)
			}

			log := logger(false).With("component", "site-cache")

			m, err := mirror.New(mirror.Options{
				Upstream: cfg.Upstream, Insecure: cfg.Insecure, Dir: cfg.StorageDir,
				BytesPerSecond: cfg.BytesPerSecond(), ChunkDelta: *cfg.ChunkDelta, Logger: log,
				MaxBytes: cfg.MaxBytesValue(), KeepManifests: cfg.KeepManifests,
			})
			if err != nil {
				return err
			}
			defer m.Close()

			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
			}

			srv := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}
			errc := make(chan error, 1)

			go func() { errc <- srv.Serve(ln) }()

			log.Info("site cache serving", "listen", ln.Addr().String(), "upstream", cfg.Upstream,
				"storageDir", cfg.StorageDir, "bytesPerSecond", cfg.BytesPerSecond(), "chunkDelta", *cfg.ChunkDelta,
				"maxBytes", cfg.MaxBytesValue())

			select {
			case err := <-errc:
				return fmt.Errorf("serving: %w", err)
			case <-cmd.Context().Done():
			}

			log.Info("stopping")

			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			m.Close() // fetches stop; what arrived stays for the next start

			if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("stopping: %w", err)
			}

			st := m.Stats()
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}

			fmt.Fprintf(cmd.OutOrStdout(), "WAN bytes %d, blobs fetched %d (%d by chunks), chunks fetched %d, reused %d, resumed bytes %d, served %d, refused %d, stored bytes %d, evicted %d blobs (%d bytes)\n",
				st.WANBytes, st.BlobsFetched, st.BlobsViaDelta, st.ChunksFetched, st.ChunksReused, st.BytesResumed, st.BlobsServed, st.CorruptRefused,
				st.StoredBytes, st.BlobsEvicted, st.BytesEvicted)

			return nil
		},
	}

	cmd.Flags().StringVar(&cfgPath, "config", "", "YAML configuration (see fleetctl/README.md, \"Site cache\")")
	cmd.Flags().StringVar(&over.Listen, "listen", sitecache.DefaultListen, "host:port the nodes reach the cache on")
	cmd.Flags().StringVar(&over.Upstream, "upstream", "", "host[:port] of the regional registry")
	cmd.Flags().StringVar(&over.StorageDir, "storage-dir", "", "where blobs, chunks and partial downloads are kept")
	cmd.Flags().StringVar(&over.BandwidthLimit, "bandwidth-limit", "", "WAN cap per second, e.g. 2Mbit, 250KB (default: none)")
	cmd.Flags().BoolVar(&over.Insecure, "insecure", false, "plain HTTP to the upstream (lab registries)")
	cmd.Flags().StringVar(&over.MaxBytes, "max-bytes", "", "cap on the stored blobs, e.g. 20GiB (default: none); least recently used blobs are evicted past it")
	cmd.Flags().IntVar(&over.KeepManifests, "keep-manifests", 0, "the blobs of this many most recently used manifests are never evicted (default 2)")
	cmd.Flags().BoolVar(&noDelta, "no-chunk-delta", false, "always fetch whole blobs, even where a chunk index is published")

	return cmd
}
