package addons_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/addons"
)

// TestReadCacheIndex reads index.json from a real FAT filesystem image, as
// the builder writes the IMAGECACHE partition.
func TestReadCacheIndex(t *testing.T) {
	for _, tool := range []string{"mkfs.vfat", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required (dosfstools, mtools)", tool)
			}

			t.Skipf("%s not installed", tool)
		}
	}

	dir := t.TempDir()
	img := filepath.Join(dir, "cache.img")
	index := filepath.Join(dir, "index.json")
	want := `{"schemaVersion":2,"manifests":[{"digest":"sha256:1111","annotations":{"io.containerd.image.name":"quay.io/cilium/cilium:v1.18.0"}}]}`

	require.NoError(t, os.WriteFile(index, []byte(want), 0o644))

	out, err := exec.Command("mkfs.vfat", "-F", "32", "-n", "IMAGECACHE", "-C", img, "40960").CombinedOutput()
	require.NoError(t, err, string(out))

	_, err = addons.ReadCacheIndex(img)
	require.ErrorContains(t, err, "no index.json")

	out, err = exec.Command("mcopy", "-i", img, index, "::/index.json").CombinedOutput()
	require.NoError(t, err, string(out))

	got, err := addons.ReadCacheIndex(img)
	require.NoError(t, err)
	require.Equal(t, want, string(got))

	cached, err := addons.CachedDigests(got)
	require.NoError(t, err)
	require.Equal(t, "sha256:1111", cached["quay.io/cilium/cilium:v1.18.0"])

	_, err = addons.ReadCacheIndex(filepath.Join(dir, "missing"))
	require.Error(t, err)
}
