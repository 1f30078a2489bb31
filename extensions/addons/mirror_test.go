package addons_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/addons"
)

func TestMirror(t *testing.T) {
	m, err := addons.ParseMirror([]string{"quay.io=127.0.0.1:5000/quay.io", "docker.io=registry.site/hub", "helm.cilium.io=127.0.0.1:5000/helm.cilium.io/"})
	require.NoError(t, err)

	d, err := m.ImageDigestRef("quay.io/cilium/cilium:v1.18.0", "sha256:"+repeat64("a"))
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:5000/quay.io/cilium/cilium@sha256:"+repeat64("a"), d.String())
	assert.Equal(t, "http", d.Context().Scheme(), "a loopback mirror is plain HTTP")

	d, err = m.ImageDigestRef("docker.io/otel/opentelemetry-collector-k8s:0.127.0", "sha256:"+repeat64("b"))
	require.NoError(t, err)
	assert.Equal(t, "registry.site/hub/otel/opentelemetry-collector-k8s@sha256:"+repeat64("b"), d.String())
	assert.Equal(t, "https", d.Context().Scheme())

	d, err = m.ImageDigestRef("ghcr.io/x/y:1", "sha256:"+repeat64("c"))
	require.NoError(t, err)
	assert.Equal(t, "ghcr.io/x/y@sha256:"+repeat64("c"), d.String(), "unmapped hosts stay upstream")

	u, err := m.URL("https://helm.cilium.io/cilium-1.18.0.tgz")
	require.NoError(t, err)
	assert.Equal(t, "http://127.0.0.1:5000/helm.cilium.io/cilium-1.18.0.tgz", u)

	ref, plain, err := addons.Mirror{"ghcr.io": "127.0.0.1:5000/ghcr.io"}.OCIChartRef(addons.Chart{Repository: "oci://ghcr.io/prometheus-community/charts", Name: "prometheus", Version: "27.45.0"})
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:5000/ghcr.io/prometheus-community/charts/prometheus:27.45.0", ref)
	assert.True(t, plain)

	for _, bad := range []string{"quay.io", "=x", "quay.io/cilium=x"} {
		_, err := addons.ParseMirror([]string{bad})
		assert.Error(t, err, bad)
	}
}

func repeat64(s string) string {
	out := ""
	for len(out) < 64 {
		out += s
	}

	return out
}
