package bake_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/bake"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/spec"
)

const def = "name: edge\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\naddons: [cilium, metallb]\n"

func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	require.NoError(t, err)

	return filepath.Join(dir, "..", "..")
}

// The shipped add-ons are pinned to the stand-ins (extensions/README.md):
// a production definition must refuse them, naming each.
func TestProductionDefinitionRefusesStandins(t *testing.T) {
	d, err := spec.Parse("edge.yaml", []byte(def))
	require.NoError(t, err)

	b := bake.New(repoRoot(t))
	defer b.Close()

	_, err = b.Bake(context.Background(), build.BakeRequest{Def: d, WorkDir: t.TempDir()})
	require.Error(t, err)
	require.Contains(t, err.Error(), "edge.yaml: addons: cilium, metallb are stand-ins (pins.source: standin)")
	require.Contains(t, err.Error(), "lab: true")
}

func TestStandinsFlagged(t *testing.T) {
	require.Equal(t, []string{"cilium", "metallb"}, mustStandins(t, "name: x\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\nlab: true\naddons: [cilium, metallb]\n"))
}

func mustStandins(t *testing.T, y string) []string {
	d, err := spec.Parse("x.yaml", []byte(y))
	require.NoError(t, err)

	names, err := bake.Standins(filepath.Join(repoRoot(t), "extensions"), d)
	require.NoError(t, err)

	return names
}

// A lab definition bakes them, and the record says they are stand-ins.
func TestLabBakeMarksStandinsInRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("renders an add-on through the stand-in mirror")
	}

	d, err := spec.Parse("lab.yaml", []byte("name: x\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\nlab: true\naddons: [metallb]\n"))
	require.NoError(t, err)

	b := bake.New(repoRoot(t))
	defer b.Close()

	baked, err := b.Bake(context.Background(), build.BakeRequest{Def: d, WorkDir: t.TempDir()})
	require.NoError(t, err)
	require.Len(t, baked.Addons, 1)
	require.Equal(t, "standin", baked.Addons[0].Source)
	require.True(t, baked.Addons[0].Standin, "build.json marks the stand-in")
}

// The site cache is this project's own: a production definition bakes it
// (not a stand-in), building fleetctl, and build.json records its image
// digest with source "built".
func TestProductionBakesBuiltSiteCache(t *testing.T) {
	if testing.Short() {
		t.Skip("builds fleetctl")
	}

	d, err := spec.Parse("edge.yaml", []byte("name: edge\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\naddons: [site-cache]\n"))
	require.NoError(t, err)

	builds, err := bake.Builds(filepath.Join(repoRoot(t), "extensions"), d)
	require.NoError(t, err)
	require.Equal(t, []string{"fleetctl"}, builds, "the cache key follows fleetctl's sources")

	b := bake.New(repoRoot(t))
	defer b.Close()

	fp, err := b.Fingerprint(d)
	require.NoError(t, err)
	require.NotEmpty(t, fp)

	baked, err := b.Bake(context.Background(), build.BakeRequest{Def: d, WorkDir: t.TempDir()})
	require.NoError(t, err)
	require.Len(t, baked.Addons, 1)
	require.Equal(t, "built", baked.Addons[0].Source)
	require.False(t, baked.Addons[0].Standin)
	require.Len(t, baked.Addons[0].Images, 1)
	require.Equal(t, "ghcr.io/labfleet/site-cache:v0.1.0", baked.Addons[0].Images[0].Ref)
	require.Regexp(t, `^sha256:[0-9a-f]{64}$`, baked.Addons[0].Images[0].Digest)
	require.NotEmpty(t, baked.ImageCacheDir)
}
