// Package extensions bakes the platform add-ons (Cilium, MetalLB, an
// OpenTelemetry collector, Prometheus with a Thanos sidecar, and the
// project's own site cache) into an image: it renders their pinned Helm
// charts (the site cache's chart is local, its image built from this
// repository by the bake), puts the manifests into the image's
// bootstrap configuration (Talos documents without any secret, see
// machineconfig.Bootstrap) and writes every referenced container image, by
// digest, into an OCI image layout for the disk's IMAGECACHE partition.
// A node's full configuration, with the cluster's secrets, is made with
// machineconfig.NodeConfig from Baked.Manifests and delivered after boot.
package extensions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/machineconfig"
	"github.com/labfleet/labfleet/extensions/standin"
)

// SiteValues are the per-site add-on parameters (an inventory site entry).
type SiteValues = addons.SiteValues

// BakeOptions are the inputs of Bake.
type BakeOptions struct {
	// Dir is the add-ons root (extensions/ in the repository).
	Dir string
	// Addons to bake, in install order; empty means addons.DefaultAddons.
	Addons []string
	// Mirror maps upstream hosts to where charts and images are fetched
	// (StartStandinMirror's mapping in the lab); nil fetches from upstream.
	Mirror map[string]string
	// KubernetesVersion defaults to the machinery release's default.
	KubernetesVersion string
	// Site, when set, renders the site parameters and applies them as a
	// per-site machine config patch; nil bakes the values files' defaults.
	Site *SiteValues
	// CacheDir is where the OCI image layout is written; it must not exist
	// or be empty.
	CacheDir string
	// ImageCacheDir, when set, receives the same images in Talos's image
	// cache format (addons.WriteTalosCache: blob/ and manifests/), the root
	// of the disk's IMAGECACHE filesystem; it must not exist or be empty.
	ImageCacheDir string
	// ModuleRoot is the Go module built images are compiled from
	// (images[].build); empty means the parent of Dir (the repository).
	ModuleRoot string
	// Binaries maps a build name (addons.Builds) to an already built
	// binary to use instead of compiling it (tests, or a CI that built
	// fleetctl with the same flags: see addons.BuildBinary).
	Binaries map[string]string
	// Logger receives progress; nil is silent.
	Logger *slog.Logger
}

// Baked is what Bake produced.
type Baked struct {
	// MachineConfig is the validated bootstrap configuration an image
	// embeds (YAML): no secret, checked with machineconfig.CheckNoSecrets.
	MachineConfig []byte `json:"-"`
	// Manifests are the add-ons' default inline manifests, in install
	// order: pass them to machineconfig.NodeConfig (with SitePatch as a
	// patch when set) so a node's delivered config carries the same add-ons.
	Manifests []machineconfig.Manifest `json:"-"`
	// SitePatch is the per-site patch applied, if Site was set.
	SitePatch []byte `json:"-"`
	// CacheLayoutDir is the OCI image layout directory (= CacheDir).
	CacheLayoutDir string `json:"cacheLayoutDir"`
	// ImageCacheDir is the Talos-format image cache tree (= ImageCacheDir
	// of the options; empty when not asked for).
	ImageCacheDir string `json:"imageCacheDir,omitempty"`
	// Addons records what was baked, for the build record.
	Addons []AddonRecord `json:"addons"`
	// CacheBytes is the layout's size on disk.
	CacheBytes int64 `json:"cacheBytes"`
	// DedupSavedBytes is what sharing layers across images saved.
	DedupSavedBytes int64 `json:"dedupSavedBytes"`
	// RenderTime and CacheTime are the durations of the two phases.
	RenderTime time.Duration `json:"renderTime"`
	CacheTime  time.Duration `json:"cacheTime"`
}

// AddonRecord is one baked add-on.
type AddonRecord struct {
	// Name of the add-on (also its inline manifest's name).
	Name string `json:"name"`
	// Chart and Version of the upstream chart; ChartDigest is sha256 of
	// its archive.
	Chart       string `json:"chart"`
	Version     string `json:"version"`
	ChartDigest string `json:"chartDigest"`
	// PinSource is "upstream", "standin" or "built" (addon.yaml
	// pins.source); a built add-on's chart is local and its ChartDigest is
	// addons.LocalChartDigest, its image digests come from the bake's build.
	PinSource string `json:"pinSource"`
	// Objects is how many Kubernetes objects its manifest holds.
	Objects int `json:"objects"`
	// Images are the pinned images its manifests reference.
	Images []ImageRecord `json:"images"`
}

// ImageRecord is one cached image.
type ImageRecord struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

// Bake renders the add-ons, generates and validates the bootstrap
// configuration with them as inline manifests, and writes the image cache.
// It reads no secret: the result may be embedded in an image.
// It fails, naming manifest and image, if a manifest references an image
// that is not pinned or not in the cache. Same inputs, same bytes.
func Bake(ctx context.Context, opts BakeOptions) (*Baked, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if opts.CacheDir == "" {
		return nil, errors.New("bake: cache directory is required")
	}

	if opts.Site != nil {
		if err := opts.Site.Validate("site"); err != nil {
			return nil, err
		}
	}

	list, err := addons.LoadAll(opts.Dir, opts.Addons)
	if err != nil {
		return nil, err
	}

	m := addons.Mirror(opts.Mirror)
	start := time.Now()

	// The project's own images first: their digests are the pins the
	// charts are rendered with.
	built, err := buildImages(ctx, list, opts, log)
	if err != nil {
		return nil, err
	}

	// Defaults first: the image's manifests do not depend on a site.
	rendered, err := renderAll(ctx, list, m, nil, opts.KubernetesVersion, log)
	if err != nil {
		return nil, err
	}

	manifests := make([]machineconfig.Manifest, len(rendered))
	for i, r := range rendered {
		manifests[i] = machineconfig.Manifest{Name: r.Addon.Name, Contents: r.Manifest}
	}

	mcOpts := machineconfig.Options{
		KubernetesVersion: opts.KubernetesVersion,
		Manifests:         manifests,
		LocalImageCache:   true,
	}

	baked := &Baked{CacheLayoutDir: opts.CacheDir, Manifests: manifests}
	uses := collectUses(rendered)

	if opts.Site != nil {
		siteRendered, patch, err := sitePatch(ctx, list, m, opts.Site, opts.KubernetesVersion, log)
		if err != nil {
			return nil, err
		}

		mcOpts.Patches = append(mcOpts.Patches, patch)
		baked.SitePatch = patch
		uses = append(uses, collectUses(siteRendered)...)
	}

	cfg, err := machineconfig.Bootstrap(mcOpts)
	if err != nil {
		return nil, err
	}

	baked.MachineConfig = cfg
	baked.RenderTime = time.Since(start)

	log.Info("rendered add-ons", "addons", len(rendered), "duration", baked.RenderTime)

	var pins []addons.PinnedImage

	for _, r := range rendered {
		rec := AddonRecord{
			Name: r.Addon.Name, Chart: r.Addon.Chart.Name, Version: r.Addon.Chart.Version,
			ChartDigest: r.ChartDigest, PinSource: r.Addon.Pins.Source, Objects: len(r.Objects),
		}

		for _, img := range r.Addon.Images {
			rec.Images = append(rec.Images, ImageRecord{Ref: img.Ref, Digest: img.Digest})
			pins = append(pins, addons.PinnedImage{Ref: img.Ref, Digest: img.Digest})
		}

		baked.Addons = append(baked.Addons, rec)
	}

	start = time.Now()

	stats, err := addons.BuildCacheWith(ctx, opts.CacheDir, pins, built, m, log)
	if err != nil {
		return nil, err
	}

	if err := addons.CheckCache(opts.CacheDir, uses); err != nil {
		return nil, err
	}

	if opts.ImageCacheDir != "" {
		if err := addons.WriteTalosCache(ctx, opts.CacheDir, opts.ImageCacheDir); err != nil {
			return nil, err
		}

		baked.ImageCacheDir = opts.ImageCacheDir
	}

	baked.CacheTime = time.Since(start)
	baked.CacheBytes = stats.Bytes
	baked.DedupSavedBytes = stats.DedupSavedBytes

	log.Info("wrote image cache", "dir", opts.CacheDir, "images", stats.Images, "bytes", stats.Bytes,
		"dedupSavedBytes", stats.DedupSavedBytes, "duration", baked.CacheTime)

	return baked, nil
}

func renderAll(ctx context.Context, list []*addons.Addon, m addons.Mirror, site *SiteValues, kubeVersion string, log *slog.Logger) ([]*addons.Rendered, error) {
	var (
		out  []*addons.Rendered
		errs []error
	)

	for _, a := range list {
		fc, err := a.LoadChart(ctx, m)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a.Name, err)
		}

		r, err := addons.Render(ctx, a, fc, addons.RenderOptions{Site: site, KubeVersion: kubeVersion})
		if err != nil {
			return nil, err
		}

		if err := r.CheckPinned(); err != nil {
			errs = append(errs, err)
		}

		log.Debug("rendered add-on", "addon", a.Name, "chart", fc.From, "objects", len(r.Objects), "images", len(r.Images))
		out = append(out, r)
	}

	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	if err := addons.CheckCustomResources(out); err != nil {
		return nil, err
	}

	return out, nil
}

// buildImages builds the images of the add-ons that carry their own
// (images[].build), sets each one's digest on its add-on (the pin the
// manifest is rendered with) and returns them for the cache. The builds
// are reproducible, so the digests are stable for the same source.
func buildImages(ctx context.Context, list []*addons.Addon, opts BakeOptions, log *slog.Logger) (map[addons.PinnedImage]v1.Image, error) {
	out := map[addons.PinnedImage]v1.Image{}
	binaries := map[string][]byte{}

	for _, a := range list {
		for i := range a.Images {
			img := &a.Images[i]
			if img.Build == "" {
				continue
			}

			bin, ok := binaries[img.Build]
			if !ok {
				var err error
				if bin, err = binary(ctx, img.Build, opts); err != nil {
					return nil, fmt.Errorf("%s: images[%d] (%s): %w", a.File, i, img.Name, err)
				}

				binaries[img.Build] = bin
			}

			bi, err := addons.BuiltImage(img.Build, bin)
			if err != nil {
				return nil, fmt.Errorf("%s: images[%d] (%s): %w", a.File, i, img.Name, err)
			}

			d, err := bi.Digest()
			if err != nil {
				return nil, fmt.Errorf("%s: images[%d] (%s): %w", a.File, i, img.Name, err)
			}

			img.Digest = d.String()
			out[addons.PinnedImage{Ref: img.Ref, Digest: img.Digest}] = bi

			log.Info("built add-on image", "addon", a.Name, "ref", img.Ref, "digest", img.Digest, "binaryBytes", len(bin))
		}
	}

	return out, nil
}

// binary returns the named build's binary: the one given in
// opts.Binaries, or compiled now into a temporary directory.
func binary(ctx context.Context, build string, opts BakeOptions) ([]byte, error) {
	if p, ok := opts.Binaries[build]; ok {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading the %s binary: %w", build, err)
		}

		return b, nil
	}

	root := opts.ModuleRoot
	if root == "" {
		abs, err := filepath.Abs(opts.Dir)
		if err != nil {
			return nil, err
		}

		root = filepath.Dir(abs)
	}

	tmp, err := os.MkdirTemp("", "labfleet-bake-build-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp) //nolint:errcheck

	out := filepath.Join(tmp, build)
	if err := addons.BuildBinary(ctx, root, build, out); err != nil {
		return nil, err
	}

	return os.ReadFile(out)
}

func collectUses(rs []*addons.Rendered) []addons.ImageUse {
	var out []addons.ImageUse
	for _, r := range rs {
		out = append(out, r.Images...)
	}

	return out
}

// sitePatch renders the add-ons that take site parameters with the site's
// values and returns them as a machine config patch replacing their inline
// manifests.
func sitePatch(ctx context.Context, list []*addons.Addon, m addons.Mirror, site *SiteValues, kubeVersion string, log *slog.Logger) ([]*addons.Rendered, []byte, error) {
	var withParams []*addons.Addon

	for _, a := range list {
		if len(a.Parameters) > 0 {
			withParams = append(withParams, a)
		}
	}

	// Custom resources of a site chart (MetalLB's pools) need the CRDs of
	// the full set, so render everything and keep the parameterised ones.
	all, err := renderAll(ctx, list, m, site, kubeVersion, log)
	if err != nil {
		return nil, nil, fmt.Errorf("rendering site %s: %w", site.Name, err)
	}

	var (
		rendered  []*addons.Rendered
		manifests []machineconfig.Manifest
	)

	for _, r := range all {
		for _, a := range withParams {
			if r.Addon == a {
				rendered = append(rendered, r)
				manifests = append(manifests, machineconfig.Manifest{Name: a.Name, Contents: r.Manifest})
			}
		}
	}

	patch, err := machineconfig.InlineManifestPatch(manifests)
	if err != nil {
		return nil, nil, err
	}

	return rendered, patch, nil
}

// SitePatchOptions are the inputs of SitePatch.
type SitePatchOptions struct {
	// Dir, Addons, Mirror, KubernetesVersion: as in BakeOptions.
	Dir               string
	Addons            []string
	Mirror            map[string]string
	KubernetesVersion string
	// ModuleRoot, Binaries: as in BakeOptions (the site cache's image is
	// built to know the digest its manifest names).
	ModuleRoot string
	Binaries   map[string]string
	// Site is the site entry; required.
	Site *SiteValues
}

// SitePatch renders the per-site machine config patch for a site entry: a
// KubeInlineManifestConfig document per add-on with site parameters,
// replacing the image's default manifest of that add-on. Missing or
// malformed site values are an error naming the field.
func SitePatch(ctx context.Context, opts SitePatchOptions) ([]byte, error) {
	if opts.Site == nil {
		return nil, errors.New("site patch: a site entry is required")
	}

	if err := opts.Site.Validate("site"); err != nil {
		return nil, err
	}

	list, err := addons.LoadAll(opts.Dir, opts.Addons)
	if err != nil {
		return nil, err
	}

	log := slog.New(slog.DiscardHandler)

	if _, err := buildImages(ctx, list, BakeOptions{Dir: opts.Dir, ModuleRoot: opts.ModuleRoot, Binaries: opts.Binaries}, log); err != nil {
		return nil, err
	}

	_, patch, err := sitePatch(ctx, list, addons.Mirror(opts.Mirror), opts.Site, opts.KubernetesVersion, log)

	return patch, err
}

// StartStandinMirror starts an in-process registry and chart repository on
// 127.0.0.1, publishes the project's stand-ins for every pinned chart and
// image under their upstream names, and returns the mirror mapping to pass
// as BakeOptions.Mirror. The lab build uses it so `make images` works
// offline; stop shuts the server down.
func StartStandinMirror(ctx context.Context) (mirror map[string]string, stop func(), err error) {
	s, err := standin.Start(ctx, standin.DefaultCatalog())
	if err != nil {
		return nil, nil, fmt.Errorf("starting stand-in mirror: %w", err)
	}

	return s.Mirror, func() { s.Close() }, nil //nolint:errcheck
}
