package addons_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/addons"
)

func TestBumpRepinsAndKeepsComments(t *testing.T) {
	dir := filepath.Join(copyAddon(t, "cilium"), "cilium")
	file := filepath.Join(dir, addons.SpecFile)

	before, err := addons.Load(dir)
	require.NoError(t, err)

	res, err := addons.Bump(context.Background(), dir, addons.BumpOptions{
		Version: "1.18.1", Mirror: mirror, Source: addons.SourceStandin, Note: "test",
	})
	require.NoError(t, err)
	assert.True(t, res.Written)

	after, err := addons.Load(dir)
	require.NoError(t, err)

	assert.Equal(t, "1.18.1", after.Chart.Version)
	assert.NotEqual(t, before.Chart.Digest, after.Chart.Digest)
	assert.Equal(t, "quay.io/cilium/cilium:v1.18.1", after.Images[0].Ref, "tags follow the chart's defaults")
	assert.Equal(t, "quay.io/cilium/operator-generic:v1.18.1", after.Images[1].Ref)
	assert.NotEqual(t, before.Images[0].Digest, after.Images[0].Digest)
	assert.Equal(t, "test", after.Pins.Note)

	b, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Contains(t, string(b), "# HTTP Helm repository (index.yaml).", "comments survive")
	assert.Contains(t, string(b), "# Cilium: the cluster network")

	// The new pins render and verify.
	fc, err := addons.VerifyChart(context.Background(), after.Chart, mirror)
	require.NoError(t, err)

	r, err := addons.Render(context.Background(), after, fc, addons.RenderOptions{})
	require.NoError(t, err)
	require.NoError(t, r.CheckPinned())

	// Re-pinning the same version changes nothing.
	_, err = addons.Bump(context.Background(), dir, addons.BumpOptions{Mirror: mirror, Source: addons.SourceStandin, Note: "test"})
	require.NoError(t, err)

	again, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, string(b), string(again))
}

func TestBumpErrors(t *testing.T) {
	tests := []struct {
		name string
		opts addons.BumpOptions
		want string
	}{
		{"unknown version", addons.BumpOptions{Version: "9.9.9", Source: addons.SourceStandin}, "9.9.9"},
		{"bad version", addons.BumpOptions{Version: "latest", Source: addons.SourceStandin}, "semantic version"},
		{"unknown image", addons.BumpOptions{Tags: map[string]string{"hubble": "v1"}, Source: addons.SourceStandin}, `no image named "hubble"`},
		{"missing tag", addons.BumpOptions{Tags: map[string]string{"agent": "v0.0.1"}, Source: addons.SourceStandin}, "quay.io/cilium/cilium:v0.0.1"},
		{"bad source", addons.BumpOptions{Source: "guess"}, "pins source"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(copyAddon(t, "cilium"), "cilium")
			file := filepath.Join(dir, addons.SpecFile)

			orig, err := os.ReadFile(file)
			require.NoError(t, err)

			tt.opts.Mirror = mirror

			_, err = addons.Bump(context.Background(), dir, tt.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)

			now, err := os.ReadFile(file)
			require.NoError(t, err)
			assert.Equal(t, string(orig), string(now), "a failed bump writes nothing")
		})
	}
}

func TestBumpFillsEmptyPins(t *testing.T) {
	dir := filepath.Join(copyAddon(t, "otel-collector"), "otel-collector")
	file := filepath.Join(dir, addons.SpecFile)

	b, err := os.ReadFile(file)
	require.NoError(t, err)

	want, err := addons.Load(dir)
	require.NoError(t, err)

	// Blank every digest, as a new add-on starts.
	blank := string(b)
	blank = strings.ReplaceAll(blank, want.Chart.Digest, `""`)
	blank = strings.ReplaceAll(blank, want.Images[0].Digest, `""`)
	require.NoError(t, os.WriteFile(file, []byte(blank), 0o644))

	_, err = addons.Load(dir)
	require.Error(t, err, "unpinned definitions do not load for baking")

	_, err = addons.Bump(context.Background(), dir, addons.BumpOptions{Mirror: mirror, Source: addons.SourceStandin})
	require.NoError(t, err)

	got, err := addons.Load(dir)
	require.NoError(t, err)
	assert.Equal(t, want.Chart.Digest, got.Chart.Digest, "pins are reproducible")
	assert.Equal(t, want.Images[0].Digest, got.Images[0].Digest)
}
