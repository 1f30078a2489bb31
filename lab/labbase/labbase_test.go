package labbase

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/u-root/u-root/pkg/cpio"
)

// requireAssets returns the lab assets dir, failing in CI and skipping
// elsewhere when hack/fetch-lab-assets.sh has not run.
func requireAssets(t *testing.T) string {
	t.Helper()

	repo, err := FindRepoDir()
	require.NoError(t, err)

	dir := DefaultAssetsDir(repo)
	if _, err := LoadAssets(dir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("lab assets missing in CI: %v", err)
		}

		t.Skipf("lab assets missing: %v", err)
	}

	return dir
}

// readInitramfs decompresses and lists an initramfs: name -> record content.
func readInitramfs(t *testing.T, p string) map[string]cpio.Record {
	t.Helper()

	raw, err := os.ReadFile(p)
	require.NoError(t, err)

	dec, err := zstd.NewReader(bytes.NewReader(raw))
	require.NoError(t, err)

	defer dec.Close()

	var buf bytes.Buffer

	_, err = buf.ReadFrom(dec)
	require.NoError(t, err)

	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(buf.Bytes())))
	require.NoError(t, err)

	out := map[string]cpio.Record{}
	for _, r := range recs {
		out[r.Name] = r
	}

	return out
}

func content(t *testing.T, r cpio.Record) string {
	t.Helper()

	b := make([]byte, r.FileSize)
	_, err := r.ReadAt(b, 0)
	require.NoError(t, err)

	return string(b)
}

func TestBuildTrivialIsReproducible(t *testing.T) {
	assets := requireAssets(t)

	var results []*Result

	for i := range 2 {
		res, err := Build(t.Context(), Options{
			AssetsDir:   assets,
			OutDir:      filepath.Join(t.TempDir(), "out"+string(rune('a'+i))),
			Version:     "0.0.1-test",
			TrivialInit: true,
		})
		require.NoError(t, err)

		results = append(results, res)
	}

	assert.Equal(t, results[0].Digest, results[1].Digest, "same inputs must give the same image")
	assert.Equal(t, results[0].InitramfsSize, results[1].InitramfsSize)

	files := readInitramfs(t, results[0].InitramfsPath)
	require.Contains(t, files, "init")
	require.Contains(t, files, "dev/console")
	assert.Equal(t, "0.0.1-test\n", content(t, files["etc/labos/version"]))
	assert.NotContains(t, files, "usr/sbin/cryptsetup", "the baseline carries no tools")

	p, err := layout.FromPath(results[0].LayoutDir)
	require.NoError(t, err)

	idx, err := p.ImageIndex()
	require.NoError(t, err)

	m, err := idx.IndexManifest()
	require.NoError(t, err)
	require.Len(t, m.Manifests, 1)
	assert.Equal(t, "0.0.1-test", m.Manifests[0].Annotations[AnnotationVersion])
	assert.Equal(t, results[0].Digest, m.Manifests[0].Digest.String())

	// The stand-in installer-base: one linux/amd64 image in Talos's
	// installer-base layout, the same bytes every build.
	ib := func(r *Result) v1.Image {
		p, err := layout.FromPath(r.InstallerBaseDir)
		require.NoError(t, err)
		idx, err := p.ImageIndex()
		require.NoError(t, err)
		m, err := idx.IndexManifest()
		require.NoError(t, err)
		require.Len(t, m.Manifests, 1)
		require.NotNil(t, m.Manifests[0].Platform, "Talos's imager takes an OCI path's image by its platform")
		assert.Equal(t, "amd64", m.Manifests[0].Platform.Architecture)
		img, err := idx.Image(m.Manifests[0].Digest)
		require.NoError(t, err)

		return img
	}
	img0, img1 := ib(results[0]), ib(results[1])
	d0, err := img0.Digest()
	require.NoError(t, err)
	d1, err := img1.Digest()
	require.NoError(t, err)
	assert.Equal(t, d0, d1)

	cf, err := img0.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, []string{"/bin/installer"}, cf.Config.Entrypoint)
	assert.Equal(t, InstallerBaseTalosVersion, cf.Config.Labels["alpha.talos.dev/version"])

	rc := mutate.Extract(img0)
	defer rc.Close() //nolint:errcheck

	tr := tar.NewReader(rc)
	found := false

	for {
		h, err := tr.Next()
		if err != nil {
			break
		}

		if h.Name == "usr/bin/installer" {
			found = true
			assert.Equal(t, int64(0o755), h.Mode)
		}
	}

	assert.True(t, found, "usr/bin/installer in the installer-base")
}

func TestBuildLabBaseContents(t *testing.T) {
	assets := requireAssets(t)

	// Any static binary stands in for labos here; the layout is what is tested.
	initBin := filepath.Join(t.TempDir(), "init")
	opts := Options{Version: "x"}
	require.NoError(t, opts.setDefaults())
	b := &builder{opts: opts, log: opts.Logger}
	data, err := b.goBuild(t.Context(), trivialInitPackage)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(initBin, data, 0o755))

	res, err := Build(context.Background(), Options{
		AssetsDir:   assets,
		LabosBinary: initBin,
		OutDir:      t.TempDir(),
		Version:     "1.2.3",
	})
	require.NoError(t, err)

	files := readInitramfs(t, res.InitramfsPath)
	kdir := "lib/modules/" + res.KernelVersion + "/"

	for _, want := range []string{"init", "usr/sbin/cryptsetup", "usr/sbin/mke2fs", "lib64/ld-linux-x86-64.so.2",
		"lib/x86_64-linux-gnu/libcryptsetup.so.12", "lib/x86_64-linux-gnu/libc.so.6", kdir + "modules.dep"} {
		assert.Contains(t, files, want)
	}

	list := strings.Fields(content(t, files["etc/labos/modules"]))
	require.NotEmpty(t, list)

	pos := map[string]int{}
	for i, l := range list {
		assert.Contains(t, files, strings.TrimPrefix(l, "/"), "listed module must be in the archive")
		pos[filepath.Base(l)] = i
	}

	// Dependencies load first.
	for _, pair := range [][2]string{{"dm-mod.ko", "dm-crypt.ko"}, {"jbd2.ko", "ext4.ko"}, {"fat.ko", "vfat.ko"}} {
		require.Contains(t, pos, pair[0])
		require.Contains(t, pos, pair[1])
		assert.Less(t, pos[pair[0]], pos[pair[1]], "%s before %s", pair[0], pair[1])
	}

	assert.Contains(t, pos, "tun.ko", "SideroLink's TUN device module is in the initramfs")
	// labos reads the config extension's squashfs in-process: loading these
	// would only cost boot time
	assert.NotContains(t, pos, "squashfs.ko")
	assert.NotContains(t, pos, "loop.ko")
	assert.Contains(t, res.Builtin, "virtio_pci")
	assert.Contains(t, res.Builtin, "tpm_tis")
	assert.Less(t, res.InitramfsSize, int64(30<<20), "initramfs budget is 30 MB compressed")
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no version", Options{AssetsDir: t.TempDir()}, "Version is required"},
		{"no assets", Options{AssetsDir: t.TempDir(), Version: "1", TrivialInit: true}, "lab assets missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(t.Context(), tc.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
