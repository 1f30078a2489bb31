package addons_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/labfleet/labfleet/extensions/addons"
)

// fakeBinary stands in for fleetctl where only the image's bytes matter;
// extensions' bake tests use the real build.
var fakeBinary = []byte("\x7fELF not really fleetctl\n")

// loadSiteCache loads the site cache add-on and pins its image the way the
// bake does, from a build of fakeBinary.
func loadSiteCache(t *testing.T, dir string) *addons.Addon {
	t.Helper()

	a, err := addons.Load(filepath.Join(dir, "site-cache"))
	require.NoError(t, err)

	img, err := addons.BuiltImage(addons.BuildFleetctl, fakeBinary)
	require.NoError(t, err)

	d, err := img.Digest()
	require.NoError(t, err)

	a.Images[0].Digest = d.String()

	return a
}

func renderSiteCache(t *testing.T, a *addons.Addon, site *addons.SiteValues) *addons.Rendered {
	t.Helper()

	fc, err := a.LoadChart(context.Background(), nil)
	require.NoError(t, err)

	r, err := addons.Render(context.Background(), a, fc, addons.RenderOptions{Site: site})
	require.NoError(t, err)
	require.NoError(t, r.CheckPinned())

	return r
}

func TestBuiltImageIsReproducible(t *testing.T) {
	a, err := addons.BuiltImage(addons.BuildFleetctl, fakeBinary)
	require.NoError(t, err)

	// Another binary is another image; building it in between also makes
	// BuiltImage forget a (it keeps only the last image), so b below is
	// packed again rather than taken from memory.
	c, err := addons.BuiltImage(addons.BuildFleetctl, append([]byte("x"), fakeBinary...))
	require.NoError(t, err)

	b, err := addons.BuiltImage(addons.BuildFleetctl, append([]byte(nil), fakeBinary...))
	require.NoError(t, err)
	require.NotSame(t, a, b, "b was packed again")

	da, err := a.Digest()
	require.NoError(t, err)

	db, err := b.Digest()
	require.NoError(t, err)
	assert.Equal(t, da, db, "same binary, same digest")

	ma, err := a.RawManifest()
	require.NoError(t, err)

	mb, err := b.RawManifest()
	require.NoError(t, err)
	assert.Equal(t, string(ma), string(mb))

	dc, err := c.Digest()
	require.NoError(t, err)
	assert.NotEqual(t, da, dc)

	// What the image runs: the binary, as the non-root user, stamped at
	// the epoch (no build time in the bytes).
	cf, err := a.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, []string{"/usr/local/bin/fleetctl"}, cf.Config.Entrypoint)
	assert.Equal(t, "65532:65532", cf.Config.User)
	assert.Equal(t, "linux", cf.OS)
	assert.Equal(t, "amd64", cf.Architecture)
	assert.Equal(t, int64(0), cf.Created.Unix())

	layers, err := a.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)

	_, err = addons.BuiltImage("kubectl", fakeBinary)
	require.ErrorContains(t, err, `build "kubectl": allowed values are [fleetctl]`)
}

func TestSiteCacheRendersServeWithDocumentedFlags(t *testing.T) {
	a := loadSiteCache(t, root)
	site := testSite()
	site.SiteCache = addons.SiteCacheValues{Upstream: "registry.region.example:5000", BandwidthLimit: "2Mbit", Insecure: true}

	r := renderSiteCache(t, a, site)
	assert.True(t, strings.HasPrefix(r.ChartDigest, "sha256:"), r.ChartDigest)

	d := find[*appsv1.Deployment](t, r, "site-cache")
	require.NotNil(t, d.Spec.Replicas)
	assert.Equal(t, int32(1), *d.Spec.Replicas, "one cache per site: one WAN download")
	assert.Equal(t, appsv1.RecreateDeploymentStrategyType, d.Spec.Strategy.Type, "two caches must not share the store")

	ps := d.Spec.Template.Spec
	assert.True(t, ps.HostNetwork, "nodes reach the cache at its node's address")
	require.Len(t, ps.Containers, 1)

	c := ps.Containers[0]
	assert.Equal(t, a.Images[0].ImageRef(), c.Image)
	assert.Empty(t, c.Command, "the image's entrypoint is fleetctl")
	assert.Equal(t, []string{
		"site-cache", "serve",
		"--listen=:5000",
		"--upstream=registry.region.example:5000",
		"--storage-dir=/var/lib/site-cache",
		"--bandwidth-limit=2Mbit",
		"--insecure",
	}, c.Args)

	require.Len(t, c.Ports, 1)
	assert.Equal(t, int32(5000), c.Ports[0].HostPort)

	// Non-root, read-only root, no capability, bounded.
	require.NotNil(t, ps.SecurityContext)
	assert.Equal(t, int64(addons.NonRootUser), *ps.SecurityContext.RunAsUser)
	assert.True(t, *ps.SecurityContext.RunAsNonRoot)
	assert.Equal(t, int64(addons.NonRootUser), *ps.SecurityContext.FSGroup, "the kubelet makes the store writable for the user")
	require.NotNil(t, c.SecurityContext)
	assert.True(t, *c.SecurityContext.ReadOnlyRootFilesystem)
	assert.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
	assert.Equal(t, []corev1.Capability{"ALL"}, c.SecurityContext.Capabilities.Drop)
	assert.False(t, c.Resources.Limits.Memory().IsZero())
	assert.False(t, c.Resources.Limits.Cpu().IsZero())

	// The store survives the pod: a claim, mounted where --storage-dir points.
	find[*corev1.PersistentVolumeClaim](t, r, "site-cache-store")

	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}

	assert.Equal(t, "store", mounts["/var/lib/site-cache"])
	assert.Equal(t, "tmp", mounts["/tmp"])

	svc := find[*corev1.Service](t, r, "site-cache")
	assert.Equal(t, int32(5000), svc.Spec.Ports[0].Port)

	// No site, no upstream: installed but idle, and no empty --upstream.
	idle := renderSiteCache(t, a, nil)
	d = find[*appsv1.Deployment](t, idle, "site-cache")
	assert.Equal(t, int32(0), *d.Spec.Replicas)
	assert.NotContains(t, strings.Join(d.Spec.Template.Spec.Containers[0].Args, " "), "--upstream")
}

func TestSiteCacheHostPathStorage(t *testing.T) {
	dir := copyAddon(t, "site-cache")
	vals := filepath.Join(dir, "site-cache", "values.yaml")
	require.NoError(t, os.WriteFile(vals, []byte("storage:\n  type: hostPath\n  hostPath: /var/lib/labfleet/site-cache\n"), 0o644))

	a := loadSiteCache(t, dir)
	r := renderSiteCache(t, a, nil)

	d := find[*appsv1.Deployment](t, r, "site-cache")

	var store *corev1.Volume

	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "store" {
			store = &d.Spec.Template.Spec.Volumes[i]
		}
	}

	require.NotNil(t, store)
	require.NotNil(t, store.HostPath)
	assert.Equal(t, "/var/lib/labfleet/site-cache", store.HostPath.Path)

	for _, o := range r.Objects {
		assert.NotEqual(t, "PersistentVolumeClaim", o.GVK.Kind, "no claim with a host path")
	}

	// A storage type the chart does not know fails the render, naming it.
	require.NoError(t, os.WriteFile(vals, []byte("storage:\n  type: nfs\n"), 0o644))

	a = loadSiteCache(t, dir)
	fc, err := a.LoadChart(context.Background(), nil)
	require.NoError(t, err)

	_, err = addons.Render(context.Background(), a, fc, addons.RenderOptions{})
	require.ErrorContains(t, err, `storage.type "nfs": allowed values are pvc and hostPath`)
}

func TestRenderRefusesUnbuiltImage(t *testing.T) {
	a, err := addons.Load(filepath.Join(root, "site-cache"))
	require.NoError(t, err)

	fc, err := a.LoadChart(context.Background(), nil)
	require.NoError(t, err)

	_, err = addons.Render(context.Background(), a, fc, addons.RenderOptions{})
	require.ErrorContains(t, err, "images[0] (site-cache): no digest: a built image is pinned by the bake")
}

func TestValidateLocalChartNamesFileAndField(t *testing.T) {
	base, err := os.ReadFile(filepath.Join(root, "site-cache", addons.SpecFile))
	require.NoError(t, err)

	const zeros = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

	tests := []struct {
		name      string
		old, new  string
		wantField string
		wantMsg   string
	}{
		{"repository beside local", "  local: chart", "  local: chart\n  repository: https://charts.example", "chart.repository", "must be empty with chart.local"},
		{"digest beside local", "  local: chart", "  local: chart\n  digest: " + zeros, "chart.digest", "must be empty with chart.local"},
		{"local outside the add-on", "  local: chart", "  local: ../cilium", "chart.local", "must be relative and inside the add-on directory"},
		{"local absolute", "  local: chart", "  local: /etc", "chart.local", "must be relative and inside the add-on directory"},
		{"local not a chart", "  local: chart", "  local: chart/templates", "chart.local", "not a chart directory"},
		{"name differs from Chart.yaml", "  name: site-cache\n  version", "  name: sitecache\n  version", "chart.name", `differs from the name "site-cache" in chart/Chart.yaml`},
		{"version differs from Chart.yaml", "  version: 0.1.0", "  version: 0.2.0", "chart.version", `differs from the version "0.1.0" in chart/Chart.yaml`},
		{"built image with a digest", "    build: fleetctl", "    build: fleetctl\n    digest: " + zeros, "images[0].digest", "must be empty for a built image"},
		{"unknown build", "    build: fleetctl", "    build: kubectl", "images[0].build", `"kubectl": allowed values are fleetctl`},
		{"built image, standin pins", "  source: built", "  source: standin", "images[0].build", "needs pins.source: built"},
		{"built pins, pulled image", "    build: fleetctl", "    digest: " + zeros, "images[0].build", "required with pins.source: built"},
		{"built pins, upstream chart", "  local: chart", "  repository: https://charts.example\n  digest: " + zeros, "chart.local", "required with pins.source: built"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Contains(t, string(base), tt.old)

			dir := copyAddon(t, "site-cache")
			file := filepath.Join(dir, "site-cache", addons.SpecFile)
			require.NoError(t, os.WriteFile(file, []byte(strings.Replace(string(base), tt.old, tt.new, 1)), 0o644))

			_, err := addons.Load(filepath.Join(dir, "site-cache"))
			require.Error(t, err)
			assert.Contains(t, err.Error(), file+": "+tt.wantField+": ")
			assert.Contains(t, err.Error(), tt.wantMsg)
		})
	}
}

func TestBumpRefusesBuiltAddon(t *testing.T) {
	dir := copyAddon(t, "site-cache")

	_, err := addons.Bump(context.Background(), filepath.Join(dir, "site-cache"), addons.BumpOptions{Mirror: mirror, Source: addons.SourceStandin})
	require.ErrorContains(t, err, "pins.source: \"built\": nothing to bump")
}

func TestSiteCacheSiteValues(t *testing.T) {
	s := testSite()
	s.SiteCache = addons.SiteCacheValues{Upstream: "http://registry.region.example:5000", BandwidthLimit: "2 furlongs"}

	err := s.Validate("sites/fra1.yaml")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "sites/fra1.yaml: site.siteCache.upstream: \"http://registry.region.example:5000\" must be host[:port] only")
	assert.Contains(t, err.Error(), "sites/fra1.yaml: site.siteCache.bandwidthLimit: ")

	s.SiteCache = addons.SiteCacheValues{BandwidthLimit: "2Mbit"}
	require.ErrorContains(t, s.Validate("s"), "s: site.siteCache.upstream: required when siteCache sets other fields")

	// Optional: a site without a cache is valid.
	s.SiteCache = addons.SiteCacheValues{}
	require.NoError(t, s.Validate("s"))
}

// TestBuildFingerprintFollowsSources builds no binary: on a tiny module
// laid out like this repository, the fingerprint is stable, changes with a
// source file of a package the build compiles, and ignores tests and
// packages it does not compile.
func TestBuildFingerprintFollowsSources(t *testing.T) {
	mod := t.TempDir()
	write := func(rel, content string) {
		t.Helper()

		p := filepath.Join(mod, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}

	write("go.mod", "module example.com/m\n\ngo 1.22\n")
	write("go.sum", "")
	write("fleetctl/cmd/fleetctl/main.go", "package main\n\nimport \"example.com/m/lib\"\n\nfunc main() { lib.Run() }\n")
	write("lib/lib.go", "package lib\n\nfunc Run() {}\n")
	write("other/other.go", "package other\n")

	fp := func() string {
		t.Helper()

		s, err := addons.BuildFingerprint(context.Background(), mod, addons.BuildFleetctl)
		require.NoError(t, err)

		return s
	}

	first := fp()
	assert.Equal(t, first, fp(), "stable")

	write("lib/lib_test.go", "package lib\n")
	write("other/other.go", "package other\n\n// changed\n")
	assert.Equal(t, first, fp(), "tests and packages outside the build do not count")

	write("lib/lib.go", "package lib\n\nfunc Run() { println() }\n")
	assert.NotEqual(t, first, fp(), "a compiled source changed")

	_, err := addons.BuildFingerprint(context.Background(), mod, "kubectl")
	require.ErrorContains(t, err, `build "kubectl"`)
}
