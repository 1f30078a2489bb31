package build_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"math/rand/v2"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

// The benchmarks use build_test.go's fixture approach (a base in Talos's
// imager layout served by an in-process registry, a fresh key set, the
// staticBaker) but need testing.TB helpers, while that file's take
// *testing.T; benchFixture mirrors newFixture for *testing.B.

// benchInitramfs is $LABFLEET_BENCH_INITRAMFS when set (hack/bench.sh points
// it at the labos initramfs it built), otherwise 14 MiB of seeded random
// bytes: about the labos initramfs's size, and as incompressible as a real
// compressed one. The trivial base's initramfs would flatter the figures.
func benchInitramfs(tb testing.TB) []byte {
	if p := os.Getenv("LABFLEET_BENCH_INITRAMFS"); p != "" {
		data, err := os.ReadFile(p)
		require.NoError(tb, err, "LABFLEET_BENCH_INITRAMFS")

		return data
	}

	data := make([]byte, 14<<20)
	r := rand.NewChaCha8([32]byte{'l', 'a', 'b'})
	_, err := r.Read(data)
	require.NoError(tb, err)

	return data
}

func benchRepoRoot(tb testing.TB) string {
	dir, err := os.Getwd()
	require.NoError(tb, err)

	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}

		require.NotEqual(tb, dir, filepath.Dir(dir), "go.mod not found")
		dir = filepath.Dir(dir)
	}
}

func benchAssets(tb testing.TB, root string) string {
	dir := os.Getenv("LABFLEET_CACHE")
	if dir == "" {
		dir = filepath.Join(root, "_cache")
	}

	dir = filepath.Join(dir, "lab-assets")
	if _, err := os.Stat(filepath.Join(dir, "systemd-stub.efi")); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("lab assets missing in %s: run hack/install-deps.sh (fetches them)", dir)
		}

		tb.Skipf("lab assets missing in %s: run hack/fetch-lab-assets.sh", dir)
	}

	return dir
}

type benchFixture struct {
	root, assets string
	def          *spec.Definition
	initramfsMB  float64
}

func newBenchFixture(tb testing.TB) *benchFixture {
	tb.Helper()

	repo := benchRepoRoot(tb)
	assets := benchAssets(tb, repo)
	initramfs := benchInitramfs(tb)

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)

	for _, f := range []string{"vmlinuz", "systemd-stub.efi", "systemd-boot.efi", "initramfs.xz"} {
		data := initramfs
		if f != "initramfs.xz" {
			var err error
			data, err = os.ReadFile(filepath.Join(assets, f))
			require.NoError(tb, err)
		}

		require.NoError(tb, tw.WriteHeader(&tar.Header{Name: "usr/install/amd64/" + f, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}))
		_, err := tw.Write(data)
		require.NoError(tb, err)
	}

	require.NoError(tb, tw.Close())

	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	require.NoError(tb, err)
	img, err := mutate.AppendLayers(empty.Image, layer)
	require.NoError(tb, err)

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	tb.Cleanup(srv.Close)

	u, err := url.Parse(srv.URL)
	require.NoError(tb, err)

	ref := u.Host + "/siderolabs/imager:v1.14.1"
	tag, err := name.NewTag(ref, name.Insecure)
	require.NoError(tb, err)
	require.NoError(tb, remote.Write(tag, img))

	digest, err := img.Digest()
	require.NoError(tb, err)

	root := tb.TempDir()
	_, err = keys.Generate(filepath.Join(root, "keys"), keys.GenerateOptions{})
	require.NoError(tb, err)

	// The lab definition's shape (images/lab.yaml) without add-ons: their
	// rendering is benchmarked in extensions/.
	def, err := spec.Parse("lab-bench.yaml", []byte(`
name: labos
version: 1.0.0
talosVersion: v1.14.1
base:
  image: `+ref+`
  digest: `+digest.String()+`
  insecure: true
schematic:
  customization:
    extraKernelArgs: [console=ttyS0, panic=5]
keys: keys
outputs: [uki, disk, installer]
disk: {espMiB: 96, stateMiB: 128}
`))
	require.NoError(tb, err)

	return &benchFixture{root: root, assets: assets, def: def, initramfsMB: float64(len(initramfs)) / 1e6}
}

func (f *benchFixture) build(out string, force bool) (*build.Result, error) {
	return build.Build(context.Background(), f.def, build.Options{
		Root: f.root, OutDir: out, Baker: staticBaker{config: "version: v1alpha1\n"}, Force: force,
		ToolsPath: filepath.Join(f.assets, "tools", "bin"),
	})
}

func reportSizes(b *testing.B, f *benchFixture, rec *record.Record) {
	for _, kind := range []string{spec.OutputUKI, spec.OutputDisk} {
		o, ok := rec.Output(kind)
		require.True(b, ok, "output %s missing", kind)
		b.ReportMetric(float64(o.Size)/1e6, kind+"-MB")
	}

	b.ReportMetric(f.initramfsMB, "initramfs-MB")
}

// BenchmarkBuildLab is a warm full build (UKI + disk + installer) with
// Force: the base is served from the in-process registry and the page cache,
// so this is the builder's own cost. Target (images/README.md): under 5 s.
func BenchmarkBuildLab(b *testing.B) {
	f := newBenchFixture(b)
	out := filepath.Join(f.root, "_out")

	// Warm-up: the first build also fills the page cache and Go's lazily
	// initialised state (imager, crypto).
	res, err := f.build(out, true)
	require.NoError(b, err)

	for b.Loop() {
		res, err = f.build(out, true)
		if err != nil {
			b.Fatalf("build: %v", err)
		}
	}

	require.False(b, res.Record.Cached, "a forced build was served from the cache")
	reportSizes(b, f, res.Record)
}

// BenchmarkNoopRebuild is a rebuild with nothing changed: it hashes the
// inputs into the cache key and answers from the build record. Target:
// under 0.5 s.
func BenchmarkNoopRebuild(b *testing.B) {
	f := newBenchFixture(b)
	out := filepath.Join(f.root, "_out")

	res, err := f.build(out, false)
	require.NoError(b, err)

	for b.Loop() {
		res, err = f.build(out, false)
		if err != nil {
			b.Fatalf("rebuild: %v", err)
		}

		if !res.Record.Cached {
			b.Fatal("a rebuild with nothing changed did work")
		}
	}

	reportSizes(b, f, res.Record)
}
