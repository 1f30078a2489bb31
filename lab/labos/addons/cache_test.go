package addons_test

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"testing/fstest"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/addons"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// talosTree is an image cache in Talos's format (pkg/imager/cache, flat):
// the manifest under reference/<tag> and digest/sha256-<hex>, config and
// layer in blob/.
func talosTree(name, tag string, manifest []byte, blobs ...string) (fstest.MapFS, string) {
	sum := sha256.Sum256(manifest)
	hexSum := hex.EncodeToString(sum[:])

	fsys := fstest.MapFS{
		"manifests/" + name + "/reference/" + tag:        {Data: manifest},
		"manifests/" + name + "/digest/sha256-" + hexSum: {Data: manifest},
	}

	for _, b := range blobs {
		fsys["blob/sha256-"+b] = &fstest.MapFile{Data: []byte("x")}
	}

	return fsys, "sha256:" + hexSum
}

// CachedDigests resolves a tag as Talos's registry does, and leaves out
// images whose digest file disagrees or whose blobs are missing.
func TestCachedDigests(t *testing.T) {
	cfg, layer := "aa"+hex.EncodeToString(make([]byte, 31)), "bb"+hex.EncodeToString(make([]byte, 31))
	manifest := []byte(`{"schemaVersion":2,"config":{"digest":"sha256:` + cfg + `"},"layers":[{"digest":"sha256:` + layer + `"}]}`)

	t.Run("complete", func(t *testing.T) {
		fsys, digest := talosTree("quay.io/cilium/cilium", "v1.18.0", manifest, cfg, layer)
		other := "quay.io/cilium/operator@sha256:" + hex.EncodeToString(make([]byte, 32))
		refs := []string{
			"quay.io/cilium/cilium:v1.18.0", "quay.io/cilium/cilium:v9", other,
			"quay.io/cilium/cilium@" + digest, "quay.io/cilium/cilium:v1.18.0@" + digest,
		}
		got := addons.CachedDigests(fsys, refs)
		require.Equal(t, map[string]string{
			"quay.io/cilium/cilium:v1.18.0":           digest,
			"quay.io/cilium/cilium@" + digest:         digest,
			"quay.io/cilium/cilium:v1.18.0@" + digest: digest,
		}, got)
		require.Equal(t, []string{"quay.io/cilium/cilium:v9", other}, addons.Uncached(refs, got))
	})

	t.Run("docker hub names live under docker.io", func(t *testing.T) {
		fsys, digest := talosTree("docker.io/library/busybox", "1.37", manifest, cfg, layer)
		got := addons.CachedDigests(fsys, []string{"busybox:1.37"})
		require.Equal(t, map[string]string{"busybox:1.37": digest}, got)
	})

	t.Run("missing layer", func(t *testing.T) {
		fsys, _ := talosTree("quay.io/cilium/cilium", "v1.18.0", manifest, cfg)
		require.Empty(t, addons.CachedDigests(fsys, []string{"quay.io/cilium/cilium:v1.18.0"}))
	})

	t.Run("digest file disagrees", func(t *testing.T) {
		fsys, digest := talosTree("quay.io/cilium/cilium", "v1.18.0", manifest, cfg, layer)
		fsys["manifests/quay.io/cilium/cilium/digest/sha256-"+digest[len("sha256:"):]] = &fstest.MapFile{Data: []byte("{}")}
		require.Empty(t, addons.CachedDigests(fsys, []string{"quay.io/cilium/cilium:v1.18.0"}))
	})
}

func TestImages(t *testing.T) {
	require.Equal(t, []string{"a:1", "b:2", "c:3"}, addons.Images([]nodeapi.Addon{{Images: []string{"a:1", "b:2"}}, {Images: []string{"c:3"}}}))
}

// CacheName matches Talos's registry's directory names.
func TestCacheName(t *testing.T) {
	for ref, want := range map[string]string{
		"quay.io/cilium/cilium:v1.18.0": "quay.io/cilium/cilium",
		"nginx:1":                       "docker.io/library/nginx",
		"docker.io/bitnami/x:1":         "docker.io/bitnami/x",
		"localhost:5000/x/y:1":          "localhost_5000_/x/y",
	} {
		r, err := name.ParseReference(ref)
		require.NoError(t, err)
		require.Equal(t, want, addons.CacheName(r), ref)
	}
}
