package standin_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/standin"
)

func TestDeterministic(t *testing.T) {
	for _, c := range standin.DefaultCatalog().Charts {
		a, err := c.Archive()
		require.NoError(t, err)
		b, err := c.Archive()
		require.NoError(t, err)
		assert.Equal(t, a, b, c.Name)
	}

	for _, img := range standin.DefaultCatalog().Images {
		a, err := standin.BuildImage(img)
		require.NoError(t, err)
		b, err := standin.BuildImage(img)
		require.NoError(t, err)

		da, err := a.Digest()
		require.NoError(t, err)
		db, err := b.Digest()
		require.NoError(t, err)
		assert.Equal(t, da, db, img.Ref)
	}
}

func TestImagesShareBaseLayer(t *testing.T) {
	cat := standin.DefaultCatalog()

	first, err := standin.BuildImage(cat.Images[0])
	require.NoError(t, err)
	other, err := standin.BuildImage(cat.Images[len(cat.Images)-1])
	require.NoError(t, err)

	l1, err := first.Layers()
	require.NoError(t, err)
	l2, err := other.Layers()
	require.NoError(t, err)

	d1, err := l1[0].Digest()
	require.NoError(t, err)
	d2, err := l2[0].Digest()
	require.NoError(t, err)
	assert.Equal(t, d1, d2)

	top1, err := l1[len(l1)-1].Digest()
	require.NoError(t, err)
	top2, err := l2[len(l2)-1].Digest()
	require.NoError(t, err)
	assert.NotEqual(t, top1, top2)
}

func TestServer(t *testing.T) {
	s, err := standin.Start(context.Background(), standin.DefaultCatalog())
	require.NoError(t, err)

	defer s.Close() //nolint:errcheck

	for _, host := range []string{"quay.io", "docker.io", "ghcr.io", "helm.cilium.io", "metallb.github.io", "open-telemetry.github.io"} {
		assert.Equal(t, s.Host+"/"+host, s.Mirror[host])
	}

	resp, err := http.Get("http://" + s.Host + "/helm.cilium.io/index.yaml")
	require.NoError(t, err)

	body, err := io.ReadAll(resp.Body)
	resp.Body.Close() //nolint:errcheck
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), "https://helm.cilium.io/cilium-1.18.1.tgz")

	ref, err := name.NewTag(s.Host+"/quay.io/thanos/thanos:v0.39.2", name.Insecure)
	require.NoError(t, err)

	img, err := remote.Image(ref)
	require.NoError(t, err)

	cf, err := img.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, "quay.io/thanos/thanos:v0.39.2", cf.Config.Labels["org.labfleet.standin"])

	resp, err = http.Get("http://" + s.Host + "/helm.cilium.io/nope.tgz")
	require.NoError(t, err)
	resp.Body.Close() //nolint:errcheck
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestUnknownTemplate(t *testing.T) {
	_, err := standin.Chart{Template: "nope", Name: "nope", Version: "1.0.0"}.Archive()
	require.Error(t, err)
}
