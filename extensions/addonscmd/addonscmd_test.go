package addonscmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/addonscmd"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()

	cmd := addonscmd.NewCommand()

	var out bytes.Buffer

	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true

	err := cmd.ExecuteContext(context.Background())

	return out.String(), err
}

func TestList(t *testing.T) {
	out, err := run(t, "list", "--dir", "..")
	require.NoError(t, err)
	assert.Contains(t, out, "cilium")
	assert.Contains(t, out, "opentelemetry-collector")

	out, err = run(t, "list", "--dir", "..", "-o", "json")
	require.NoError(t, err)

	var list []addons.Addon
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list, 5)
	assert.Equal(t, "cilium", list[0].Name)
	assert.Regexp(t, `^sha256:[0-9a-f]{64}$`, list[0].Chart.Digest)
	assert.Equal(t, "site-cache", list[3].Name, "sorted by name")
	assert.Equal(t, "chart", list[3].Chart.Local)
	assert.Equal(t, addons.SourceBuilt, list[3].Pins.Source)

	out, err = run(t, "list", "--dir", "..")
	require.NoError(t, err)
	assert.Regexp(t, `site-cache\s+site-cache\s+0\.1\.0\s+\(local\)\s+1\s+built`, out)
}

func TestShowBuilt(t *testing.T) {
	out, err := run(t, "show", "site-cache", "--dir", "..")
	require.NoError(t, err)
	assert.Contains(t, out, "local: ../site-cache/chart")
	assert.Contains(t, out, "ghcr.io/labfleet/site-cache:v0.1.0 (built from fleetctl by the bake; digest computed then)")
}

func TestShow(t *testing.T) {
	out, err := run(t, "show", "thanos", "--dir", "..")
	require.NoError(t, err)
	assert.Contains(t, out, "quay.io/thanos/thanos:v0.39.2@sha256:")
	assert.Contains(t, out, "thanos.objstoreSecret")

	out, err = run(t, "show", "metallb", "--dir", "..", "-o", "json")
	require.NoError(t, err)

	var a addons.Addon
	require.NoError(t, json.Unmarshal([]byte(out), &a))
	assert.Equal(t, "0.15.2", a.Chart.Version)
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"list", "--dir", "..", "-o", "yaml"},
		{"show", "nope", "--dir", ".."},
		{"bump", "cilium", "--dir", "..", "--mirror", "quay.io"},
		{"bump", "cilium", "--dir", "..", "--tag", "agent"},
		{"bump", "cilium", "--dir", "..", "--standin", "--source", "upstream"},
	} {
		_, err := run(t, args...)
		require.Error(t, err, args)
		assert.ErrorIs(t, err, addonscmd.ErrUsage, args)
	}
}

func TestBumpStandin(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.CopyFS(filepath.Join(root, "cilium"), os.DirFS("../cilium")))

	file := filepath.Join(root, "cilium", addons.SpecFile)

	orig, err := os.ReadFile(file)
	require.NoError(t, err)

	out2, err := run(t, "bump", "cilium", "--dir", root, "--version", "1.18.1", "--standin", "--dry-run", "-o", "json")
	require.NoError(t, err)

	var res addons.BumpResult
	require.NoError(t, json.Unmarshal([]byte(out2), &res))
	assert.Equal(t, "1.18.1", res.Chart.NewVersion)
	assert.False(t, res.Written)

	now, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, string(orig), string(now), "dry run writes nothing")

	_, err = run(t, "bump", "cilium", "--dir", root, "--version", "1.18.1", "--standin")
	require.NoError(t, err)

	a, err := addons.Load(filepath.Join(root, "cilium"))
	require.NoError(t, err)
	assert.Equal(t, "1.18.1", a.Chart.Version)
	assert.Equal(t, "standin", a.Pins.Source)
	assert.Equal(t, "imagectl addons bump cilium --version=1.18.1 --standin", a.Pins.Note)
}

func TestSitePatch(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "fra1.yaml")
	require.NoError(t, os.WriteFile(good, []byte(`name: fra1
region: eu-central
metallb: {addressPools: [10.20.0.0/28]}
otel: {endpoint: "otel.fra1.example:4317"}
thanos: {objstoreSecret: thanos-bucket-fra1}
`), 0o644))

	out, err := run(t, "site-patch", "--dir", "..", "--site", good, "--standin")
	require.NoError(t, err)
	assert.Contains(t, out, "kind: KubeInlineManifestConfig")
	assert.Contains(t, out, "name: metallb")
	assert.Contains(t, out, "name: thanos")
	assert.Contains(t, out, "name: otel-collector")
	assert.NotContains(t, out, "name: cilium\n")

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("name: fra1\nregion: eu-central\n"), 0o644))

	_, err = run(t, "site-patch", "--dir", "..", "--site", bad, "--standin")
	require.ErrorIs(t, err, addonscmd.ErrUsage)
	assert.Contains(t, err.Error(), "site.metallb.addressPools: required")

	_, err = run(t, "site-patch", "--dir", "..")
	require.ErrorIs(t, err, addonscmd.ErrUsage)
}
