package machineconfig_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/internal/exttest"
	"github.com/labfleet/labfleet/extensions/machineconfig"
)

const ns = `apiVersion: v1
kind: Namespace
metadata:
  name: demo
`

func TestGenerate(t *testing.T) {
	opts := machineconfig.Options{
		ClusterName: "lab", Endpoint: "https://10.0.2.15:6443", SecretsPath: exttest.WriteSecrets(t),
		Manifests: []machineconfig.Manifest{{Name: "cilium", Contents: ns}, {Name: "metallb", Contents: ns}},
	}

	cfg, err := machineconfig.Generate(opts)
	require.NoError(t, err)

	_, err = machineconfig.Validate(cfg)
	require.NoError(t, err)

	off, err := machineconfig.ProxyDisabled(cfg)
	require.NoError(t, err)
	assert.True(t, off, "kube-proxy disabled: Cilium replaces it")

	none, err := machineconfig.FlannelAbsent(cfg)
	require.NoError(t, err)
	assert.True(t, none, "CNI none: no Flannel document")

	ms, err := machineconfig.InlineManifests(cfg)
	require.NoError(t, err)
	require.Len(t, ms, 2)
	assert.Equal(t, "cilium", ms[0].Name)
	assert.Equal(t, "metallb", ms[1].Name)

	again, err := machineconfig.Generate(opts)
	require.NoError(t, err)
	assert.Equal(t, string(cfg), string(again), "same inputs, same bytes")
}

func TestGeneratePatch(t *testing.T) {
	patch, err := machineconfig.InlineManifestPatch([]machineconfig.Manifest{{Name: "metallb", Contents: strings.Replace(ns, "demo", "site", 1)}})
	require.NoError(t, err)

	cfg, err := machineconfig.Generate(machineconfig.Options{
		ClusterName: "lab", Endpoint: "https://10.0.2.15:6443", SecretsPath: exttest.WriteSecrets(t),
		Manifests: []machineconfig.Manifest{{Name: "cilium", Contents: ns}, {Name: "metallb", Contents: ns}},
		Patches:   [][]byte{patch},
	})
	require.NoError(t, err)

	ms, err := machineconfig.InlineManifests(cfg)
	require.NoError(t, err)
	require.Len(t, ms, 2, "the patch replaces by name")

	for _, m := range ms {
		if m.Name == "metallb" {
			assert.Contains(t, m.Contents, "name: site")
		} else {
			assert.Contains(t, m.Contents, "name: demo")
		}
	}
}

func TestGenerateErrors(t *testing.T) {
	sec := exttest.WriteSecrets(t)

	tests := []struct {
		name string
		opts machineconfig.Options
		want string
	}{
		{"no cluster", machineconfig.Options{Endpoint: "https://a:6443", SecretsPath: sec}, "cluster name"},
		{"no endpoint", machineconfig.Options{ClusterName: "c", SecretsPath: sec}, "endpoint"},
		{"no secrets", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443"}, "secrets"},
		{"missing secrets file", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: "/nonexistent/secrets.yaml"}, "loading secrets bundle"},
		{"bad manifest name", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: sec, Manifests: []machineconfig.Manifest{{Name: "Not_Valid", Contents: ns}}}, "manifest name is invalid"},
		{"duplicate manifest", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: sec, Manifests: []machineconfig.Manifest{{Name: "a", Contents: ns}, {Name: "a", Contents: ns}}}, `"a" given twice`},
		{"bad patch", machineconfig.Options{ClusterName: "c", Endpoint: "https://a:6443", SecretsPath: sec, Patches: [][]byte{[]byte("machine: [")}}, "patch"},
		{"bad endpoint", machineconfig.Options{ClusterName: "c", Endpoint: "not a url", SecretsPath: sec}, "machine config"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := machineconfig.Generate(tt.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestValidateRejectsGarbage(t *testing.T) {
	_, err := machineconfig.Validate([]byte("version: v1alpha1\nmachine: {type: nonsense}\n"))
	require.Error(t, err)
}
