package sitecache_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sitecache"
)

func write(t *testing.T, body string) string {
	t.Helper()

	p := filepath.Join(t.TempDir(), "site-cache.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o644))

	return p
}

func TestLoadConfigGood(t *testing.T) {
	p := write(t, "version: v1alpha1\nlisten: 10.0.0.2:5000\nupstream: registry.region.example:5000\nstorageDir: /var/cache/sc\nbandwidthLimit: 2Mbit\n")

	c, err := sitecache.LoadConfig(p)
	require.NoError(t, err)
	require.Equal(t, int64(250000), c.BytesPerSecond())
	require.True(t, *c.ChunkDelta, "chunk delta on by default")
}

func TestBadConfigNamesFileAndField(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"version", "version: v2\nupstream: r:5000\nstorageDir: /x\n", []string{": version: \"v2\" is not supported"}},
		{"listen", "version: v1alpha1\nlisten: \"5000\"\nupstream: r:5000\nstorageDir: /x\n", []string{": listen: \"5000\" is not host:port"}},
		{"listen port", "version: v1alpha1\nlisten: \":70000\"\nupstream: r:5000\nstorageDir: /x\n", []string{": listen: port \"70000\" must be 0-65535"}},
		{"upstream scheme", "version: v1alpha1\nupstream: https://r:5000/v2\nstorageDir: /x\n", []string{": upstream: \"https://r:5000/v2\" must be host[:port] only"}},
		{"missing both", "version: v1alpha1\n", []string{": upstream: required", ": storageDir: required"}},
		{"bandwidth unit", "version: v1alpha1\nupstream: r\nstorageDir: /x\nbandwidthLimit: 2 furlongs\n", []string{": bandwidthLimit: \"2 furlongs\": unknown unit \"furlongs\""}},
		{"bandwidth tiny", "version: v1alpha1\nupstream: r\nstorageDir: /x\nbandwidthLimit: 10bit\n", []string{": bandwidthLimit: \"10bit\" is below 1 KB/s"}},
		{"unknown field", "version: v1alpha1\nupstream: r\nstorageDir: /x\nbandwith: 2Mbit\n", []string{"field bandwith not found"}},
		{"max bytes unit", "version: v1alpha1\nupstream: r\nstorageDir: /x\nmaxBytes: 20 GB/s\n", []string{": maxBytes: \"20 GB/s\" is not a size"}},
		{"max bytes tiny", "version: v1alpha1\nupstream: r\nstorageDir: /x\nmaxBytes: 10KB\n", []string{": maxBytes: \"10KB\" is below 64 MiB"}},
		{"keep manifests", "version: v1alpha1\nupstream: r\nstorageDir: /x\nkeepManifests: -1\n", []string{": keepManifests: -1 is negative"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, tc.body)

			_, err := sitecache.LoadConfig(p)
			require.Error(t, err)

			for _, w := range tc.want {
				require.ErrorContains(t, err, p)
				require.ErrorContains(t, err, w)
			}
		})
	}
}

func TestMaxBytes(t *testing.T) {
	p := write(t, "version: v1alpha1\nupstream: r:5000\nstorageDir: /x\nmaxBytes: 20GiB\nkeepManifests: 3\n")

	c, err := sitecache.LoadConfig(p)
	require.NoError(t, err)
	require.Equal(t, int64(20<<30), c.MaxBytesValue())
	require.Equal(t, 3, c.KeepManifests)

	for in, want := range map[string]int64{"": 0, "0": 0, "500MB": 500e6, "20GiB": 20 << 30, "1.5TB": 1.5e12, "100000000": 1e8} {
		got, err := sitecache.ParseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
}

func TestParseBandwidth(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "0": 0, "2Mbit": 250000, "512kbit/s": 64000, "250KB": 250000, "1MiB": 1 << 20, "1.5Mbit": 187500} {
		got, err := sitecache.ParseBandwidth(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
}
