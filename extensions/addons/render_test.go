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

func find[T any](t *testing.T, r *addons.Rendered, name string) T {
	t.Helper()

	for _, o := range r.Objects {
		if v, ok := o.Typed.(T); ok && o.Name == name {
			return v
		}
	}

	var zero T

	t.Fatalf("%s: no %T named %q in the rendered manifest", r.Addon.Name, zero, name)

	return zero
}

func TestRenderDecodesIntoKubernetesTypes(t *testing.T) {
	var all []*addons.Rendered

	for _, a := range loadAll(t) {
		r := renderOne(t, a, nil)
		require.NotEmpty(t, r.Objects, a.Name)
		require.NoError(t, r.CheckPinned())

		for _, o := range r.Objects {
			assert.True(t, o.Typed != nil || o.Custom != nil, o.Label())
		}

		// Every pinned image is used, by digest.
		refs := map[string]bool{}
		for _, u := range r.Images {
			refs[u.Ref] = true
		}

		for _, img := range a.Images {
			assert.True(t, refs[img.ImageRef()], "%s: %s not referenced", a.Name, img.ImageRef())
		}

		all = append(all, r)
	}

	require.NoError(t, addons.CheckCustomResources(all))
}

func TestCiliumAsTalosRequires(t *testing.T) {
	a, err := addons.Load(filepath.Join(root, "cilium"))
	require.NoError(t, err)

	r := renderOne(t, a, nil)

	cm := find[*corev1.ConfigMap](t, r, "cilium-config")
	assert.Equal(t, "kubernetes", cm.Data["ipam"])
	assert.Equal(t, "true", cm.Data["kube-proxy-replacement"])
	assert.Equal(t, "localhost", cm.Data["k8s-service-host"])
	assert.Equal(t, "7445", cm.Data["k8s-service-port"], "KubePrism")
	assert.Equal(t, "/sys/fs/cgroup", cm.Data["cgroup-root"])

	ds := find[*appsv1.DaemonSet](t, r, "cilium")
	spec := ds.Spec.Template.Spec

	for _, c := range spec.InitContainers {
		assert.NotEqual(t, "mount-cgroup", c.Name, "Talos mounts cgroup v2 itself: cgroup.autoMount.enabled=false")
	}

	caps := func(c corev1.Container) []string {
		var out []string
		for _, cp := range c.SecurityContext.Capabilities.Add {
			out = append(out, string(cp))
		}

		return out
	}

	require.NotEmpty(t, spec.Containers)
	assert.NotContains(t, caps(spec.Containers[0]), "SYS_MODULE", "Talos forbids module loading")
	assert.Contains(t, caps(spec.Containers[0]), "NET_ADMIN")

	for _, c := range spec.InitContainers {
		if c.Name == "clean-cilium-state" {
			assert.ElementsMatch(t, []string{"NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"}, caps(c))
		}
	}

	for _, v := range spec.Volumes {
		if v.Name == "cilium-cgroup" {
			assert.Equal(t, "/sys/fs/cgroup", v.HostPath.Path)
		}
	}

	op := find[*appsv1.Deployment](t, r, "cilium-operator")
	assert.Equal(t, int32(1), *op.Spec.Replicas)
}

func TestRenderSiteParameters(t *testing.T) {
	site := testSite()

	byName := map[string]*addons.Rendered{}
	for _, a := range loadAll(t) {
		byName[a.Name] = renderOne(t, a, site)
	}

	// MetalLB: the site chart adds the pools as custom resources.
	var pools []string

	for _, o := range byName["metallb"].Objects {
		if o.Custom != nil && o.GVK.Kind == "IPAddressPool" {
			assert.Equal(t, "fra1-default", o.Name)

			got, _, err := unstructuredStrings(o.Custom.Object, "spec", "addresses")
			require.NoError(t, err)

			pools = got
		}
	}

	assert.Equal(t, site.MetalLB.AddressPools, pools)

	// Thanos: external labels and the object store secret.
	th := byName["thanos"]
	cm := find[*corev1.ConfigMap](t, th, "prometheus-server")
	assert.Contains(t, cm.Data["prometheus.yml"], "site: fra1")
	assert.Contains(t, cm.Data["prometheus.yml"], "region: eu-central")

	dep := find[*appsv1.Deployment](t, th, "prometheus-server")

	var secret string

	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			secret = v.Secret.SecretName
		}
	}

	assert.Equal(t, "thanos-bucket-fra1", secret)

	// OTel: the exporter endpoint.
	ocm := find[*corev1.ConfigMap](t, byName["otel-collector"], "otel-opentelemetry-collector-agent")
	assert.Contains(t, ocm.Data["relay"], "endpoint: otel.fra1.example:4317")

	// Without a site, the defaults render and there are no pools.
	m, err := addons.Load(filepath.Join(root, "metallb"))
	require.NoError(t, err)

	for _, o := range renderOne(t, m, nil).Objects {
		assert.Nil(t, o.Custom, "no site, no pools: %s", o.Label())
	}
}

func unstructuredStrings(obj map[string]any, path ...string) ([]string, bool, error) {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false, nil
		}

		cur = m[p]
	}

	list, _ := cur.([]any)
	out := make([]string, 0, len(list))

	for _, v := range list {
		s, _ := v.(string)
		out = append(out, s)
	}

	return out, true, nil
}

func TestRenderIsDeterministic(t *testing.T) {
	for _, a := range loadAll(t) {
		r1 := renderOne(t, a, testSite())
		r2 := renderOne(t, a, testSite())
		assert.Equal(t, r1.Manifest, r2.Manifest, a.Name)
	}
}

func TestUnpinnedImageNamesManifestAndImage(t *testing.T) {
	dir := copyAddon(t, "thanos")
	values := filepath.Join(dir, "thanos", "values.yaml")

	b, err := os.ReadFile(values)
	require.NoError(t, err)

	// A second sidecar whose image addon.yaml does not pin.
	extra := strings.Replace(string(b), "  sidecarContainers:\n", "  sidecarContainers:\n    debug:\n      image: docker.io/library/busybox:1.37\n", 1)
	require.NoError(t, os.WriteFile(values, []byte(extra), 0o644))

	a, err := addons.Load(filepath.Join(dir, "thanos"))
	require.NoError(t, err)

	err = renderOne(t, a, nil).CheckPinned()
	require.ErrorIs(t, err, addons.ErrUnpinned)
	assert.Contains(t, err.Error(), "prometheus/templates/server.yaml (Deployment monitoring/prometheus-server)")
	assert.Contains(t, err.Error(), `container "debug" references docker.io/library/busybox:1.37`)
}

func TestInvalidObjectNamesTemplate(t *testing.T) {
	_, err := addons.DecodeManifest("x", `---
# Source: x/templates/bad.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad
spec:
  replicas: "many"
`)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "x: x/templates/bad.yaml: not a valid Kubernetes object")

	_, err = addons.DecodeManifest("x", `---
# Source: x/templates/typo.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: c
dataa:
  k: v
`)
	require.Error(t, err, "strict decoding rejects unknown fields")
	assert.Contains(t, err.Error(), "x/templates/typo.yaml")
}

func TestCustomResourceNeedsCRD(t *testing.T) {
	a, err := addons.Load(filepath.Join(root, "metallb"))
	require.NoError(t, err)

	r := renderOne(t, a, testSite())

	// Drop the CRDs: the pools are now of an unknown kind.
	var kept []addons.Object

	for _, o := range r.Objects {
		if o.GVK.Kind != "CustomResourceDefinition" {
			kept = append(kept, o)
		}
	}

	r.Objects = kept

	err = addons.CheckCustomResources([]*addons.Rendered{r})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "metallb-site/templates/pools.yaml (IPAddressPool metallb-system/fra1-default)")
}

func TestChartDigestMismatch(t *testing.T) {
	a, err := addons.Load(filepath.Join(root, "cilium"))
	require.NoError(t, err)

	c := a.Chart
	c.Digest = "sha256:" + repeat64("0")

	_, err = addons.VerifyChart(context.Background(), c, mirror)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "does not match the pinned sha256:0000")
}

func TestImageValuesMergeWithValuesFile(t *testing.T) {
	dir := copyAddon(t, "cilium")
	values := filepath.Join(dir, "cilium", "values.yaml")

	b, err := os.ReadFile(values)
	require.NoError(t, err)
	require.Contains(t, string(b), "  pullPolicy: IfNotPresent\n")

	// A key the values file sets beside the injected repository, tag and
	// digest must survive the injection.
	require.NoError(t, os.WriteFile(values, []byte(strings.Replace(string(b), "  pullPolicy: IfNotPresent\n", "  pullPolicy: Never\n", 1)), 0o644))

	a, err := addons.Load(filepath.Join(dir, "cilium"))
	require.NoError(t, err)

	ds := find[*appsv1.DaemonSet](t, renderOne(t, a, nil), "cilium")
	agent := ds.Spec.Template.Spec.Containers[0]
	assert.Equal(t, a.Images[0].ImageRef(), agent.Image)
	assert.Equal(t, corev1.PullNever, agent.ImagePullPolicy)
}
