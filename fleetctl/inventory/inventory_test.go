package inventory_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
)

func TestLoadDirectoryMergesFiles(t *testing.T) {
	inv, err := inventory.Load("testdata/dir")
	require.NoError(t, err)
	require.NoError(t, inv.Validate())

	require.Len(t, inv.Sites, 1)
	require.Len(t, inv.Clusters, 1)
	assert.Equal(t, 2, inv.NodeCount())

	c := inv.Clusters[0]
	assert.Equal(t, filepath.Join("testdata", "dir", "clusters.yaml"), c.Source)
	// Relative to the file, and absolute (issue 13 finding 3): a resume from
	// another directory must find the same credentials.
	wd, err := os.Getwd()
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(wd, "testdata", "dir", "creds", "ber-1-a", "talosconfig"), c.Talosconfig)

	s, ok := inv.Site("ber-1")
	require.True(t, ok)
	assert.Equal(t, "Europe/Berlin", s.TimeZone)
}

func TestValidateNamesFileEntryAndField(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want []string // substrings, each from one error
	}{
		{
			name: "bad site fields",
			doc: `
sites:
  - name: x
    region: ""
    country: Germany
    timezone: Mars/Base
    bandwidth: huge
`,
			want: []string{
				`inv.yaml: sites[0] "x": region: required`,
				`sites[0] "x": country: "Germany" is not an ISO 3166-1 alpha-2 code`,
				`sites[0] "x": timezone: "Mars/Base" is not an IANA time zone`,
				`sites[0] "x": bandwidth: "huge" is not a bandwidth class`,
			},
		},
		{
			name: "bad window",
			doc: `
sites:
  - {name: x, region: r, timezone: UTC, windows: [{start: "25:00", duration: 1h}]}
`,
			want: []string{`sites[0] "x": windows[0]: start: "25:00" is not a time of day`},
		},
		{
			name: "cluster and node problems",
			doc: `
sites:
  - {name: s, region: r, timezone: UTC}
clusters:
  - name: a
    site: nowhere
    nodes:
      - {name: n1, endpoint: "1.2.3.4", role: master}
      - {name: n1, endpoint: "1.2.3.4", role: worker}
  - name: a
    site: s
    nodes: []
`,
			want: []string{
				`clusters[0] "a": site: unknown site "nowhere"`,
				`clusters[0] "a" nodes[0] "n1": role: "master" is not a role (want controlplane or worker)`,
				`clusters[0] "a" nodes[1] "n1": name: duplicate node name`,
				`clusters[0] "a" nodes[1] "n1": endpoint: "1.2.3.4" is also node n1 of cluster a`,
				`clusters[1] "a": name: duplicate cluster name (first defined in inv.yaml)`,
				`clusters[1] "a": nodes: a cluster needs at least one node`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := inventory.Parse("inv.yaml", []byte(tc.doc))
			require.NoError(t, err)

			err = inv.Validate()
			require.Error(t, err)

			var errs inventory.Errors
			require.True(t, errors.As(err, &errs))
			assert.Len(t, errs, len(tc.want), err.Error())

			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestParseRejectsUnknownFields(t *testing.T) {
	_, err := inventory.Parse("inv.yaml", []byte("sites:\n  - name: x\n    timezon: UTC\n"))
	require.ErrorContains(t, err, "inv.yaml")
	require.ErrorContains(t, err, "timezon")
}

// Finding 10 of issue 13: the same endpoint in two clusters (also written
// once with and once without the default port) and a talosconfig that does
// not exist were accepted.
func TestValidateEndpointsAcrossClustersAndTalosconfig(t *testing.T) {
	inv, err := inventory.Parse("inv.yaml", []byte(`
sites:
  - {name: s, region: r, timezone: UTC}
clusters:
  - name: a
    site: s
    talosconfig: /nonexistent/talosconfig
    nodes:
      - {name: cp1, endpoint: "10.0.0.10", role: controlplane}
  - name: b
    site: s
    nodes:
      - {name: cp1, endpoint: "10.0.0.10:50000", role: controlplane}
      - {name: w1, endpoint: "[fd00::1]", role: worker}
      - {name: w2, endpoint: "[fd00::1]:50000", role: worker}
`))
	require.NoError(t, err)

	err = inv.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `inv.yaml: clusters[1] "b" nodes[0] "cp1": endpoint: "10.0.0.10:50000" is also node cp1 of cluster a ("10.0.0.10"; the port defaults to 50000)`)
	assert.Contains(t, err.Error(), `clusters[1] "b" nodes[2] "w2": endpoint: "[fd00::1]:50000" is also node w1 of cluster b`)
	assert.Contains(t, err.Error(), `inv.yaml: clusters[0] "a": talosconfig: /nonexistent/talosconfig: no such file (fleetctl site init writes one)`)
}

// A node behind a hospital firewall is named by its machine UUID; the
// driver reaches it through the hub. A wrong or repeated UUID, or both
// forms on one node, is refused naming the entry.
func TestNodesByMachineUUID(t *testing.T) {
	inv, err := inventory.Parse("inv.yaml", []byte(`
sites:
  - {name: s, region: r, timezone: UTC}
clusters:
  - name: a
    site: s
    nodes:
      - {name: cp1, machine: 5B1D6C2E-4F0A-4C1B-9E3A-2F6D8A7B9C01, role: controlplane}
      - {name: w1, machine: 6c2e5b1d-4f0a-4c1b-9e3a-2f6d8a7b9c02, role: worker}
`))
	require.NoError(t, err)
	require.NoError(t, inv.Validate())
	assert.Equal(t, "machine:5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c01", inv.Clusters[0].Nodes[0].Address())
	assert.Empty(t, inv.Clusters[0].Nodes[0].Endpoint)

	inv, err = inventory.Parse("inv.yaml", []byte(`
sites:
  - {name: s, region: r, timezone: UTC}
clusters:
  - name: a
    site: s
    nodes:
      - {name: cp1, machine: 5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c01, role: controlplane}
      - {name: cp2, machine: 5B1D6C2E-4F0A-4C1B-9E3A-2F6D8A7B9C01, role: controlplane}
      - {name: cp3, machine: "../../etc", role: controlplane}
      - {name: cp4, machine: 7c2e5b1d-4f0a-4c1b-9e3a-2f6d8a7b9c03, endpoint: 10.0.0.4, role: controlplane}
      - {name: cp5, role: controlplane}
`))
	require.NoError(t, err)

	err = inv.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `inv.yaml: clusters[0] "a" nodes[1] "cp2": machine: "5B1D6C2E-4F0A-4C1B-9E3A-2F6D8A7B9C01" is also node cp1 of cluster a`)
	assert.Contains(t, err.Error(), `nodes[2] "cp3": machine: "../../etc" is not a machine UUID`)
	assert.Contains(t, err.Error(), `nodes[3] "cp4": machine: give either endpoint or machine, not both`)
	assert.Contains(t, err.Error(), `nodes[4] "cp5": endpoint: required (host or host:port of the machine API, or machine: UUID`)
}
