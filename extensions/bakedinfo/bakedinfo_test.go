package bakedinfo_test

import (
	"os"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/bakedinfo"
)

const cfg = `version: v1alpha1
machine:
  type: controlplane
---
apiVersion: v1alpha1
kind: KubeProxyConfig
enabled: false
---
apiVersion: v1alpha1
kind: KubeInlineManifestConfig
name: cilium
manifest: |
  ---
  # Source: cilium/templates/a.yaml
  apiVersion: v1
  kind: ServiceAccount
  metadata:
    name: a
  ---
  apiVersion: v1
  kind: ServiceAccount
  metadata:
    name: b
---
apiVersion: v1alpha1
kind: KubeInlineManifestConfig
name: metallb
manifest: |
  apiVersion: v1
  kind: Namespace
  metadata:
    name: metallb-system
`

func TestManifests(t *testing.T) {
	ms, err := bakedinfo.Manifests([]byte(cfg))
	require.NoError(t, err)
	require.Len(t, ms, 2)
	assert.Equal(t, "cilium", ms[0].Name)
	assert.Equal(t, 2, ms[0].Documents)
	assert.Equal(t, "metallb", ms[1].Name)
	assert.Equal(t, 1, ms[1].Documents)
	assert.Len(t, ms[0].SHA256, 64)

	_, err = bakedinfo.Manifests([]byte("a: [\n"))
	require.Error(t, err)
}

func TestCacheImagesBothForms(t *testing.T) {
	oci := fstest.MapFS{"index.json": {Data: []byte(`{"schemaVersion":2,"manifests":[
{"digest":"sha256:bb","annotations":{"io.containerd.image.name":"quay.io/b/b:v1"}},
{"digest":"sha256:aa","annotations":{"org.opencontainers.image.ref.name":"quay.io/a/a:v2"}}]}`)}}

	imgs, err := bakedinfo.CacheImages(oci)
	require.NoError(t, err)
	assert.Equal(t, []bakedinfo.Image{{Ref: "quay.io/a/a:v2", Digest: "sha256:aa"}, {Ref: "quay.io/b/b:v1", Digest: "sha256:bb"}}, imgs)

	talos := fstest.MapFS{"manifests/quay.io/a/a/reference/v2": {Data: []byte("{}")}}

	imgs, err = bakedinfo.CacheImages(talos)
	require.NoError(t, err)
	require.Len(t, imgs, 1)
	// sha256 of "{}"
	assert.Equal(t, bakedinfo.Image{Ref: "quay.io/a/a:v2", Digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}, imgs[0])
}

func TestCheck(t *testing.T) {
	r, err := bakedinfo.Inspect([]byte(cfg), fstest.MapFS{"index.json": {Data: []byte(`{"manifests":[{"digest":"sha256:aa","annotations":{"io.containerd.image.name":"quay.io/cilium/cilium:v1"}}]}`)}})
	require.NoError(t, err)

	require.NoError(t, r.Check([]bakedinfo.Expect{{Addon: "cilium", Images: []bakedinfo.Image{{Ref: "quay.io/cilium/cilium:v1", Digest: "sha256:aa"}}}}))

	err = r.Check([]bakedinfo.Expect{
		{Addon: "thanos"},
		{Addon: "cilium", Images: []bakedinfo.Image{{Ref: "quay.io/cilium/cilium:v1", Digest: "sha256:bb"}}},
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "add-on thanos: no inline manifest")
	assert.Contains(t, err.Error(), "quay.io/cilium/cilium:v1@sha256:bb is not in the image cache")
}

func TestInspectMissingCache(t *testing.T) {
	_, err := bakedinfo.CacheImages(os.DirFS(t.TempDir()))
	require.Error(t, err)
}
