package addons_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/addons"
	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

const ciliumManifest = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: cilium
  namespace: kube-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: cilium
  labels:
    app.kubernetes.io/version: 1.18.0
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: quay.io/cilium/cilium:v1.18.0
      containers:
        - name: agent
          image: quay.io/cilium/cilium:v1.18.0
        - name: other
          image: quay.io/cilium/operator@sha256:aaaa
`

func TestFromManifests(t *testing.T) {
	got, err := addons.FromManifests([]config.InlineManifest{
		{Name: "cilium", Contents: ciliumManifest},
		{Name: "empty"},
	})
	require.NoError(t, err)
	require.Equal(t, []nodeapi.Addon{
		{
			Name:      "cilium",
			Version:   "1.18.0",
			Manifests: []string{"ServiceAccount/cilium", "DaemonSet/cilium"},
			Images:    []string{"quay.io/cilium/cilium:v1.18.0", "quay.io/cilium/operator@sha256:aaaa"},
		},
		{Name: "empty"},
	}, got)

	_, err = addons.FromManifests([]config.InlineManifest{{Name: "bad", Contents: "kind: [\n"}})
	require.Error(t, err)
}

func TestPinImages(t *testing.T) {
	cached := map[string]string{
		"quay.io/cilium/cilium:v1.18.0": "sha256:1111",
		"registry.k8s.io/pause:3.10":    "sha256:2222",
	}

	as := []nodeapi.Addon{{Name: "cilium", Images: []string{"quay.io/cilium/cilium:v1.18.0", "quay.io/cilium/operator@sha256:aaaa", "localhost:5000/x:1"}}}
	addons.PinImages(as, cached)
	require.Equal(t, []string{"quay.io/cilium/cilium@sha256:1111", "quay.io/cilium/operator@sha256:aaaa", "localhost:5000/x:1"}, as[0].Images)
}
