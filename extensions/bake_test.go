package extensions_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions"
	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/bakedinfo"
	"github.com/labfleet/labfleet/extensions/internal/exttest"
	"github.com/labfleet/labfleet/extensions/machineconfig"
)

var (
	mirror map[string]string
	// fleetctlBin is fleetctl built once, as the bake builds it, for every
	// bake of the site cache add-on in this package.
	fleetctlBin string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	mm, stop, err := extensions.StartStandinMirror(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}
	defer stop()

	tmp, err := os.MkdirTemp("", "extensions-test-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}
	defer os.RemoveAll(tmp) //nolint:errcheck

	fleetctlBin = filepath.Join(tmp, "fleetctl")
	if err := addons.BuildBinary(context.Background(), "..", addons.BuildFleetctl, fleetctlBin); err != nil {
		fmt.Fprintln(os.Stderr, err)

		return 1
	}

	mirror = mm

	return m.Run()
}

func bakeOpts(cache string) extensions.BakeOptions {
	return extensions.BakeOptions{
		Dir: ".", Mirror: mirror, CacheDir: cache, ImageCacheDir: cache + "-talos",
		Binaries: map[string]string{addons.BuildFleetctl: fleetctlBin},
	}
}

func TestBake(t *testing.T) {
	baked, err := extensions.Bake(context.Background(), bakeOpts(filepath.Join(t.TempDir(), "cache")))
	require.NoError(t, err)

	// The record lists the five add-ons with versions and digests: four
	// pinned to the stand-ins, the site cache built here.
	require.Len(t, baked.Addons, 5)

	for i, want := range addons.DefaultAddons {
		a := baked.Addons[i]
		assert.Equal(t, want, a.Name)
		assert.NotEmpty(t, a.Version)
		assert.True(t, strings.HasPrefix(a.ChartDigest, "sha256:"), a.Name)
		assert.NotEmpty(t, a.Images)

		if want == "site-cache" {
			assert.Equal(t, "built", a.PinSource)

			continue
		}

		assert.Equal(t, "standin", a.PinSource)
	}

	// The site cache's image is the build of fleetctl, pinned by digest.
	bin, err := os.ReadFile(fleetctlBin)
	require.NoError(t, err)

	img, err := addons.BuiltImage(addons.BuildFleetctl, bin)
	require.NoError(t, err)

	d, err := img.Digest()
	require.NoError(t, err)
	assert.Equal(t, []extensions.ImageRecord{{Ref: "ghcr.io/labfleet/site-cache:v0.1.0", Digest: d.String()}}, baked.Addons[4].Images)

	// The embedded config validates with machinery, holds no secret and
	// carries the add-ons.
	_, err = machineconfig.Validate(baked.MachineConfig)
	require.NoError(t, err)
	require.NoError(t, machineconfig.CheckNoSecrets(baked.MachineConfig))

	ms, err := machineconfig.InlineManifests(baked.MachineConfig)
	require.NoError(t, err)

	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}

	assert.Equal(t, addons.DefaultAddons, names)

	assert.Equal(t, ms, baked.Manifests)

	// The config a node gets after boot carries the same add-ons, runs no
	// kube-proxy and no Flannel (Cilium replaces both).
	node, err := machineconfig.NodeConfig(machineconfig.Options{
		ClusterName: "lab", Endpoint: "https://10.0.2.15:6443", SecretsPath: exttest.WriteSecrets(t),
		Manifests: baked.Manifests, LocalImageCache: true,
	}, machineconfig.RoleControlPlane)
	require.NoError(t, err)

	nodeMs, err := machineconfig.InlineManifests(node)
	require.NoError(t, err)
	assert.Equal(t, ms, nodeMs)

	off, err := machineconfig.ProxyDisabled(node)
	require.NoError(t, err)
	assert.True(t, off)

	none, err := machineconfig.FlannelAbsent(node)
	require.NoError(t, err)
	assert.True(t, none)

	// Cilium reaches the API server through KubePrism on the port Talos
	// serves it on.
	port, err := machineconfig.KubePrismPort(node)
	require.NoError(t, err)
	assert.Equal(t, 7445, port)
	assert.Contains(t, ms[0].Contents, `k8s-service-port: "7445"`)

	ic, err := machineconfig.LocalImageCacheEnabled(baked.MachineConfig)
	require.NoError(t, err)
	assert.True(t, ic, "the add-on images come from the IMAGECACHE partition")

	// Every pinned image is in the cache by digest.
	var uses []addons.ImageUse

	for _, a := range baked.Addons {
		for _, img := range a.Images {
			uses = append(uses, addons.ImageUse{Addon: a.Name, Manifest: "record", Ref: img.Ref + "@" + img.Digest})
		}
	}

	require.NoError(t, addons.CheckCache(baked.CacheLayoutDir, uses))
	assert.Positive(t, baked.DedupSavedBytes)
	assert.Positive(t, baked.CacheBytes)

	// What labos reports from the booted image matches the record, from
	// the OCI layout and from Talos's registry form alike.
	var want []bakedinfo.Expect

	for _, a := range baked.Addons {
		e := bakedinfo.Expect{Addon: a.Name}
		for _, img := range a.Images {
			e.Images = append(e.Images, bakedinfo.Image{Ref: img.Ref, Digest: img.Digest})
		}

		want = append(want, e)
	}

	require.NotEmpty(t, baked.ImageCacheDir, "Bake writes Talos's image cache format")

	for _, dir := range []string{baked.CacheLayoutDir, baked.ImageCacheDir} {
		rep, err := bakedinfo.Inspect(baked.MachineConfig, os.DirFS(dir))
		require.NoError(t, err)
		require.Len(t, rep.Images, 9, "8 stand-in images and the site cache's")
		require.NoError(t, rep.Check(want), dir)
	}
}

func TestBakeIsDeterministic(t *testing.T) {
	b1, err := extensions.Bake(context.Background(), bakeOpts(filepath.Join(t.TempDir(), "cache")))
	require.NoError(t, err)

	b2, err := extensions.Bake(context.Background(), bakeOpts(filepath.Join(t.TempDir(), "cache")))
	require.NoError(t, err)

	assert.Equal(t, string(b1.MachineConfig), string(b2.MachineConfig))
	assert.Equal(t, b1.Addons, b2.Addons)
	assert.Equal(t, b1.CacheBytes, b2.CacheBytes)
	assert.Equal(t, exttest.Tree(t, b1.CacheLayoutDir), exttest.Tree(t, b2.CacheLayoutDir))
	assert.Equal(t, exttest.Tree(t, b1.ImageCacheDir), exttest.Tree(t, b2.ImageCacheDir), "the Talos image cache tree too")
}

// TestFleetctlBuildIsReproducible builds fleetctl a second time, as Bake
// does when no binary is given: the same source gives the same bytes, so
// the site cache image's digest computed at bake time is a stable pin.
func TestFleetctlBuildIsReproducible(t *testing.T) {
	again := filepath.Join(t.TempDir(), "fleetctl")
	require.NoError(t, addons.BuildBinary(context.Background(), "..", addons.BuildFleetctl, again))

	a, err := os.ReadFile(fleetctlBin)
	require.NoError(t, err)

	b, err := os.ReadFile(again)
	require.NoError(t, err)
	require.Equal(t, len(a), len(b))
	require.True(t, bytes.Equal(a, b), "two builds of the same source differ")

	ia, err := addons.BuiltImage(addons.BuildFleetctl, a)
	require.NoError(t, err)

	ib, err := addons.BuiltImage(addons.BuildFleetctl, b)
	require.NoError(t, err)

	da, err := ia.Digest()
	require.NoError(t, err)

	db, err := ib.Digest()
	require.NoError(t, err)
	assert.Equal(t, da, db)
}

// TestSiteCacheManifestFlagsExist checks the rendered manifest's command
// against the fleetctl it runs: every flag must be one `fleetctl
// site-cache serve` documents (a renamed flag fails here, not on a node).
func TestSiteCacheManifestFlagsExist(t *testing.T) {
	baked, err := extensions.Bake(context.Background(), func() extensions.BakeOptions {
		o := bakeOpts(filepath.Join(t.TempDir(), "cache"))
		o.Site = &extensions.SiteValues{
			Name: "fra1", Region: "eu-central",
			MetalLB:   addons.SiteMetalLB{AddressPools: []string{"10.20.0.0/28"}},
			OTel:      addons.SiteOTel{Endpoint: "otel.fra1.example:4317"},
			Thanos:    addons.SiteThanos{ObjstoreSecret: "thanos-bucket-fra1"},
			SiteCache: addons.SiteCacheValues{Upstream: "10.40.0.1:5000", BandwidthLimit: "2Mbit", Insecure: true},
		}

		return o
	}())
	require.NoError(t, err)

	ms, err := machineconfig.InlineManifests(baked.MachineConfig)
	require.NoError(t, err)

	var manifest string

	for _, m := range ms {
		if m.Name == "site-cache" {
			manifest = m.Contents
		}
	}

	require.Contains(t, manifest, "- site-cache\n            - serve\n")

	var flags []string

	for _, line := range strings.Split(manifest, "\n") {
		if f, ok := strings.CutPrefix(strings.TrimSpace(line), "- --"); ok {
			name, _, _ := strings.Cut(f, "=")
			flags = append(flags, name)
		}
	}

	assert.ElementsMatch(t, []string{"listen", "upstream", "storage-dir", "bandwidth-limit", "insecure"}, flags)

	out, err := exec.Command(fleetctlBin, "site-cache", "serve", "--help").CombinedOutput()
	require.NoError(t, err, "%s", out)

	for _, f := range flags {
		assert.Regexp(t, `(?m)^\s+(-\w, )?--`+regexp.QuoteMeta(f)+`\b`, string(out), "fleetctl site-cache serve has no --%s", f)
	}
}

func TestBakeWithSite(t *testing.T) {
	site := &extensions.SiteValues{
		Name: "fra1", Region: "eu-central",
		MetalLB:   addons.SiteMetalLB{AddressPools: []string{"10.20.0.0/28"}},
		OTel:      addons.SiteOTel{Endpoint: "otel.fra1.example:4317"},
		Thanos:    addons.SiteThanos{ObjstoreSecret: "thanos-bucket-fra1"},
		SiteCache: addons.SiteCacheValues{Upstream: "registry.eu-central.example:5000", BandwidthLimit: "2Mbit"},
	}

	opts := bakeOpts(filepath.Join(t.TempDir(), "cache"))
	opts.Site = site

	baked, err := extensions.Bake(context.Background(), opts)
	require.NoError(t, err)
	require.NotEmpty(t, baked.SitePatch)

	_, err = machineconfig.Validate(baked.MachineConfig)
	require.NoError(t, err)
	require.NoError(t, machineconfig.CheckNoSecrets(baked.MachineConfig))

	ms, err := machineconfig.InlineManifests(baked.MachineConfig)
	require.NoError(t, err)
	require.Len(t, ms, 5, "the patch replaces manifests by name, adds none")

	got := map[string]string{}
	for _, m := range ms {
		got[m.Name] = m.Contents
	}

	assert.Contains(t, got["metallb"], "kind: IPAddressPool")
	assert.Contains(t, got["metallb"], `- "10.20.0.0/28"`)
	assert.Contains(t, got["thanos"], "site: fra1")
	assert.Contains(t, got["thanos"], "secretName: thanos-bucket-fra1")
	assert.Contains(t, got["otel-collector"], "endpoint: otel.fra1.example:4317")
	assert.NotContains(t, got["cilium"], "fra1", "Cilium takes no site values")
	assert.Contains(t, got["site-cache"], "- --upstream=registry.eu-central.example:5000")
	assert.Contains(t, got["site-cache"], "- --bandwidth-limit=2Mbit")

	// The stand-alone site patch is the same patch.
	patch, err := extensions.SitePatch(context.Background(), extensions.SitePatchOptions{
		Dir: ".", Mirror: mirror, Site: site, Binaries: opts.Binaries,
	})
	require.NoError(t, err)
	assert.Equal(t, string(baked.SitePatch), string(patch))
}

func TestSiteErrors(t *testing.T) {
	tests := []struct {
		name string
		site extensions.SiteValues
		want []string
	}{
		{"empty", extensions.SiteValues{}, []string{"site.name: required", "site.region: required", "site.metallb.addressPools: required", "site.otel.endpoint: required", "site.thanos.objstoreSecret: required"}},
		{"bad pool", extensions.SiteValues{
			Name: "a", Region: "r", MetalLB: addons.SiteMetalLB{AddressPools: []string{"10.0.0.300/24"}},
			OTel: addons.SiteOTel{Endpoint: "o:4317"}, Thanos: addons.SiteThanos{ObjstoreSecret: "s"},
		}, []string{"site.metallb.addressPools[0]", "10.0.0.300/24"}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := extensions.SitePatch(context.Background(), extensions.SitePatchOptions{Dir: ".", Mirror: mirror, Site: &tt.site})
			require.Error(t, err)

			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}

			opts := bakeOpts(filepath.Join(t.TempDir(), "cache"))
			opts.Site = &tt.site

			_, err = extensions.Bake(context.Background(), opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want[0])
		})
	}
}

func TestBakeFailsWithoutMirror(t *testing.T) {
	// The stand-in pins exist only in the stand-in mirror; with an empty
	// mapping Bake would go upstream, which tests must not: map every host
	// to a closed loopback port instead and expect a clear fetch error.
	dead := map[string]string{}
	for k := range mirror {
		dead[k] = "127.0.0.1:9/" + k
	}

	opts := bakeOpts(filepath.Join(t.TempDir(), "cache"))
	opts.Mirror = dead

	_, err := extensions.Bake(context.Background(), opts)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cilium")
}

// BenchmarkBake measures rendering the five add-ons and writing their image
// cache, and reports the cache size and the bytes layer de-duplication
// saves. Run: go test -run '^$' -bench Bake -benchtime 5x ./extensions/
func BenchmarkBake(b *testing.B) {
	var last *extensions.Baked

	for i := 0; b.Loop(); i++ {
		baked, err := extensions.Bake(context.Background(), bakeOpts(filepath.Join(b.TempDir(), fmt.Sprintf("cache-%d", i))))
		if err != nil {
			b.Fatal(err)
		}

		last = baked
	}

	b.ReportMetric(float64(last.CacheBytes), "cache-bytes")
	b.ReportMetric(float64(last.DedupSavedBytes), "dedup-saved-bytes")
	b.ReportMetric(float64(last.RenderTime.Milliseconds()), "render-ms")
	b.ReportMetric(float64(last.CacheTime.Milliseconds()), "cache-ms")
}
