package addons_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/internal/exttest"
)

func allPins(list []*addons.Addon) []addons.PinnedImage {
	var out []addons.PinnedImage

	for _, a := range list {
		for _, img := range a.Images {
			out = append(out, addons.PinnedImage{Ref: img.Ref, Digest: img.Digest})
		}
	}

	return out
}

func TestCacheHoldsEveryReferencedImage(t *testing.T) {
	list := loadAll(t)

	var uses []addons.ImageUse
	for _, a := range list {
		uses = append(uses, renderOne(t, a, nil).Images...)
	}

	dir := filepath.Join(t.TempDir(), "cache")

	stats, err := addons.BuildCache(context.Background(), dir, allPins(list), mirror, nil)
	require.NoError(t, err)
	assert.Equal(t, 8, stats.Images)
	assert.Positive(t, stats.DedupSavedBytes, "the stand-ins share a base layer")
	assert.Less(t, stats.Bytes, stats.LayerBytes, "shared layers are stored once")

	require.NoError(t, addons.CheckCache(dir, uses))
}

func TestCacheMissingImageNamesManifestAndImage(t *testing.T) {
	list := loadAll(t)

	var (
		uses []addons.ImageUse
		pins []addons.PinnedImage
	)

	for _, a := range list {
		uses = append(uses, renderOne(t, a, nil).Images...)
	}

	// Leave out MetalLB's speaker.
	for _, p := range allPins(list) {
		if p.Ref != "quay.io/metallb/speaker:v0.15.2" {
			pins = append(pins, p)
		}
	}

	dir := filepath.Join(t.TempDir(), "cache")

	_, err := addons.BuildCache(context.Background(), dir, pins, mirror, nil)
	require.NoError(t, err)

	err = addons.CheckCache(dir, uses)

	var missing *addons.MissingImageError
	require.ErrorAs(t, err, &missing)
	require.Len(t, missing.Missing, 1)
	assert.Contains(t, err.Error(), "metallb: metallb/templates/speaker.yaml (DaemonSet metallb-system/metallb-speaker)")
	assert.Contains(t, err.Error(), "quay.io/metallb/speaker:v0.15.2@sha256:")
}

func TestCacheMissingBlobIsMissingImage(t *testing.T) {
	list := loadAll(t)
	a := list[0]

	dir := filepath.Join(t.TempDir(), "cache")

	_, err := addons.BuildCache(context.Background(), dir, allPins(list[:1]), mirror, nil)
	require.NoError(t, err)

	uses := renderOne(t, a, nil).Images
	require.NoError(t, addons.CheckCache(dir, uses))

	// Remove the agent's own (unshared) top layer: the image is incomplete.
	blobs, err := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
	require.NoError(t, err)

	removed := false

	for _, b := range blobs {
		fi, err := os.Stat(b)
		require.NoError(t, err)

		// The per-image layer is the only ~64 KiB blob kind.
		if fi.Size() > 60<<10 && fi.Size() < 80<<10 {
			require.NoError(t, os.Remove(b))

			removed = true

			break
		}
	}

	require.True(t, removed)
	require.Error(t, addons.CheckCache(dir, uses))
}

func TestCacheIsDeterministic(t *testing.T) {
	pins := allPins(loadAll(t))

	// Order of the input must not matter.
	rev := append([]addons.PinnedImage(nil), pins...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}

	d1 := filepath.Join(t.TempDir(), "a")
	d2 := filepath.Join(t.TempDir(), "b")

	_, err := addons.BuildCache(context.Background(), d1, pins, mirror, nil)
	require.NoError(t, err)
	_, err = addons.BuildCache(context.Background(), d2, rev, mirror, nil)
	require.NoError(t, err)

	assert.Equal(t, exttest.Tree(t, d1), exttest.Tree(t, d2))
}

func TestCacheRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "x"), nil, 0o644))

	_, err := addons.BuildCache(context.Background(), dir, nil, mirror, nil)
	require.ErrorContains(t, err, "not empty")
}

func TestCacheWrongDigest(t *testing.T) {
	_, err := addons.BuildCache(context.Background(), filepath.Join(t.TempDir(), "c"),
		[]addons.PinnedImage{{Ref: "quay.io/cilium/cilium:v1.18.0", Digest: "sha256:" + repeat64("1")}}, mirror, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "quay.io/cilium/cilium:v1.18.0")
}

func TestWriteTalosCache(t *testing.T) {
	list := loadAll(t)
	oci := filepath.Join(t.TempDir(), "oci")

	_, err := addons.BuildCache(context.Background(), oci, allPins(list), mirror, nil)
	require.NoError(t, err)

	dst := filepath.Join(t.TempDir(), "talos")
	require.NoError(t, addons.WriteTalosCache(context.Background(), oci, dst))

	for _, a := range list {
		for _, img := range a.Images {
			repo, tag, _ := strings.Cut(img.Ref, ":v")
			if !strings.Contains(img.Ref, ":v") {
				repo, tag, _ = strings.Cut(img.Ref, ":")
			} else {
				tag = "v" + tag
			}

			byTag, err := os.ReadFile(filepath.Join(dst, "manifests", repo, "reference", tag))
			require.NoError(t, err, img.Ref)

			byDigest, err := os.ReadFile(filepath.Join(dst, "manifests", repo, "digest", strings.Replace(img.Digest, "sha256:", "sha256-", 1)))
			require.NoError(t, err, img.Ref)
			assert.Equal(t, byTag, byDigest)

			sum := sha256.Sum256(byDigest)
			assert.Equal(t, img.Digest, "sha256:"+hex.EncodeToString(sum[:]), "manifest bytes hash to the pin")
		}
	}

	// only the images' own registries: the loopback registry Talos's
	// writer pulled from leaves no trace
	regs, err := os.ReadDir(filepath.Join(dst, "manifests"))
	require.NoError(t, err)

	for _, r := range regs {
		assert.NotContains(t, r.Name(), "127.0.0.1")
	}

	blobs, err := os.ReadDir(filepath.Join(dst, "blob"))
	require.NoError(t, err)

	ociBlobs, err := os.ReadDir(filepath.Join(oci, "blobs", "sha256"))
	require.NoError(t, err)
	assert.Len(t, blobs, len(ociBlobs)-8, "every config and layer once; manifests live under manifests/")
}
