package addons_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/addons"
)

func TestLoadRepositoryAddons(t *testing.T) {
	list, err := addons.LoadAll(root, nil)
	require.NoError(t, err)
	require.Len(t, list, 5)

	names := []string{}
	for _, a := range list {
		names = append(names, a.Name)

		if a.Name == "site-cache" {
			assert.Equal(t, addons.SourceBuilt, a.Pins.Source, "the site cache is this project's own build")
			assert.Equal(t, addons.RepoLocal, a.Chart.RepoKind())
			assert.Empty(t, a.Images[0].Digest, "a built image's digest is computed by the bake")

			continue
		}

		assert.Equal(t, addons.SourceStandin, a.Pins.Source, "%s: the lab's pins come from the stand-in mirror", a.Name)
	}

	assert.Equal(t, addons.DefaultAddons, names)
}

func TestValidateNamesFileAndField(t *testing.T) {
	base, err := os.ReadFile(filepath.Join(root, "cilium", addons.SpecFile))
	require.NoError(t, err)

	tests := []struct {
		name      string
		old, new  string
		wantField string
	}{
		{"bad chart digest", "  digest: sha256:", "  digest: md5:", "chart.digest"},
		{"empty repository", "repository: https://helm.cilium.io", `repository: ""`, "chart.repository"},
		{"ftp repository", "repository: https://helm.cilium.io", "repository: ftp://helm.cilium.io", "chart.repository"},
		{"bad version", "version: 1.18.0", "version: latest", "chart.version"},
		{"image with digest in ref", "ref: quay.io/cilium/cilium:v1.18.0", "ref: quay.io/cilium/cilium:v1.18.0@sha256:0000000000000000000000000000000000000000000000000000000000000000", "images[0].ref"},
		{"image without registry", "ref: quay.io/cilium/cilium:v1.18.0", "ref: cilium/cilium:v1.18.0", "images[0].ref"},
		{"image without tag", "ref: quay.io/cilium/cilium:v1.18.0", "ref: quay.io/cilium/cilium", "images[0].ref"},
		{"bad image format", "values: operator.image", "values: operator.image\n    format: list", "images[1].format"},
		{"unknown pin source", "source: standin", "source: guessed", "pins.source"},
		{"name differs from dir", "name: cilium", "name: cni", "name"},
		{"unknown site field", "parameters: []", "parameters:\n  - site: datacenter\n    values: x", "parameters[0].site"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Contains(t, string(base), tt.old)

			dir := filepath.Join(t.TempDir(), "cilium")
			require.NoError(t, os.MkdirAll(dir, 0o755))

			file := filepath.Join(dir, addons.SpecFile)
			require.NoError(t, os.WriteFile(file, []byte(strings.Replace(string(base), tt.old, tt.new, 1)), 0o644))

			_, err := addons.Load(dir)
			require.Error(t, err)
			assert.Contains(t, err.Error(), file+": "+tt.wantField+":")
		})
	}
}

func TestLoadRejectsUnknownFields(t *testing.T) {
	dir := copyAddon(t, "metallb")
	file := filepath.Join(dir, "metallb", addons.SpecFile)

	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, append(b, []byte("chartt: {}\n")...), 0o644))

	_, err = addons.Load(filepath.Join(dir, "metallb"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "chartt")
}

func TestLoadAllErrors(t *testing.T) {
	_, err := addons.LoadAll(root, []string{"cilium", "cilium"})
	require.ErrorContains(t, err, `"cilium" listed twice`)

	_, err = addons.LoadAll(root, []string{"nope"})
	require.ErrorContains(t, err, "nope")

	_, err = addons.LoadAll(root, []string{"../cilium"})
	require.ErrorContains(t, err, "not a valid add-on name")
}
