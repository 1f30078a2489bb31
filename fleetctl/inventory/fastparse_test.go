package inventory_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// fastCorpus holds inventory files for both decoding paths. fast says
// whether fastDecode must take the file itself (so the fast path cannot
// silently stop working); the others must fall back to yaml.v3, which
// reports the errors.
var fastCorpus = []struct {
	name string
	fast bool
	doc  string
}{
	{"sim style", true, `# SIMULATED fleet
sites:
    - name: site-0000
      region: region-00
      country: DE
      timezone: Europe/Berlin
      bandwidth: high
clusters:
    - name: c00000
      site: site-0000
      nodes:
        - name: n0
          endpoint: sim-c00000-n0:50000
          role: controlplane
        - name: n1
          endpoint: sim-c00000-n1:50000
          role: worker
---
sites:
    - name: site-0001
      region: region-01
      timezone: UTC
clusters:
    - name: c00001
      site: site-0001
      nodes:
        - name: n0
          endpoint: sim-c00001-n0:50000
          role: controlplane
`},
	{"flow entry and quoted key (else as below)", false, `---
# leading comment
sites:
- name: ber-1
  region: eu-central
  timezone: "Europe/Berlin"
  windows:
  - days:
    - mon
    - Tue
    start: "02:00"
    duration: 4h
  - start: '22:30'
    duration: 90m

clusters:
  # a comment line between entries
  - name: ber-1-a
    site: ber-1
    talosconfig: creds/ber-1-a/talosconfig
    labels:
      tier: gold
      example.com/team: infra
      "1": x
    nodes:
    -   name: cp1
        endpoint: 10.0.0.10
        role: controlplane
    - name: w1
      machine: 5B1D6C2E-4F0A-4C1B-9E3A-2F6D8A7B9C01
      role: worker
    - {name: w2, endpoint: 10.0.0.12, role: worker}
`},
	{"compact sequences, two-space indent, comments, quotes", true, `---
# leading comment
sites:
- name: ber-1
  region: eu-central
  timezone: "Europe/Berlin"
  windows:
  - days:
    - mon
    - Tue
    start: "02:00"
    duration: 4h
  - start: '22:30'
    duration: 90m

clusters:
  # a comment line between entries
  - name: ber-1-a
    site: ber-1
    talosconfig: /abs/../creds/talosconfig
    labels:
      tier: gold
      example.com/team: infra
    nodes:
    -   name: cp1
        endpoint: "10.0.0.10"
        role: controlplane
    - name: w1
      machine: 5B1D6C2E-4F0A-4C1B-9E3A-2F6D8A7B9C01
      role: worker
`},
	{"values yaml would resolve to other types", true, `sites:
  - name: 2024-01-01
    region: "yes"
    country: true
    timezone: 1.5e3
    bandwidth: 0x10
clusters:
  - name: off
    site: .inf
    nodes:
      - name: 0o17
        endpoint: 1.2.3.4:50000
        role: worker
`},
	{"unknown field", false, "sites:\n  - name: x\n    timezon: UTC\n"},
	{"unknown top-level field", false, "site:\n  - name: x\n"},
	{"wrong type: mapping for a list", false, "sites:\n  name: x\n"},
	{"wrong type: list for a string", false, "sites:\n  - name:\n      - a\n"},
	{"wrong type: scalar for nodes", false, "clusters:\n  - name: a\n    nodes: 3\n"},
	{"duplicate key", false, "sites:\n  - name: x\n    name: y\n"},
	{"duplicate top-level key", false, "sites:\n  - name: x\nsites:\n  - name: y\n"},
	{"duplicate label", false, "clusters:\n  - name: a\n    labels:\n      k: a\n      k: b\n"},
	{"bad duration and window are strings here", true, "sites:\n  - name: x\n    region: r\n    timezone: UTC\n    windows:\n      - start: 25:00\n        duration: forever\n"},
	{"window with flow days", false, "sites:\n  - name: x\n    windows:\n      - days: [mon]\n        start: 01:00\n        duration: 1h\n"},
	{"empty document between", false, "sites:\n  - name: x\n---\n---\nsites:\n  - name: y\n"},
	{"trailing empty document", false, "sites:\n  - name: x\n---\n"},
	{"empty file", false, ""},
	{"only a comment", false, "# nothing\n"},
	{"document end marker", false, "sites:\n  - name: x\n...\n"},
	{"null value", false, "sites:\n  - name: x\n    region:\n"},
	{"null word", false, "sites:\n  - name: null\n"},
	{"tilde", false, "sites:\n  - name: ~\n"},
	{"empty sites", false, "sites:\nclusters:\n  - name: a\n"},
	{"empty flow list", false, "clusters:\n  - name: a\n    nodes: []\n"},
	{"tab indentation", false, "sites:\n\t- name: x\n"},
	{"tab in value", false, "sites:\n  - name: x\ty\n"},
	{"carriage returns", false, "sites:\r\n  - name: x\r\n"},
	{"non-ASCII", false, "sites:\n  - name: zürich\n"},
	{"non-ASCII quoted", false, "sites:\n  - name: \"zürich\"\n"},
	{"control character quoted", false, "sites:\n  - name: 'a\x01b'\n"},
	{"control character in a comment", false, "# a\x01b\nsites:\n  - name: x\n"},
	{"tab in a comment", false, "# a\tb\nsites:\n  - name: x\n"},
	{"byte order mark", false, "\ufeffsites:\n  - name: x\n"},
	{"comment after a document", true, "sites:\n  - name: x\n# the end\n"},
	{"anchor and alias", false, "sites:\n  - &s\n    name: x\n  - *s\n"},
	{"alias value", false, "sites:\n  - name: &n x\n    region: *n\n"},
	{"merge key", false, "sites:\n  - <<: {name: x}\n"},
	{"tag", false, "sites:\n  - name: !!str x\n"},
	{"block scalar", false, "sites:\n  - name: |\n      x\n"},
	{"continued plain scalar", false, "sites:\n  - name: x\n      y\n"},
	{"continued plain scalar in days", false, "sites:\n  - name: x\n    windows:\n      - days:\n        - mon\n          tue\n"},
	{"comment after value", false, "sites:\n  - name: x # the site\n"},
	{"escape in double quotes", false, "sites:\n  - name: \"x\\ty\"\n"},
	{"quote in single quotes", false, "sites:\n  - name: 'it''s'\n"},
	{"unterminated quote", false, "sites:\n  - name: \"x\n"},
	{"bad indentation", false, "sites:\n  - name: x\n   region: r\n"},
	{"less indented sequence entry", false, "clusters:\n  - name: a\n    nodes:\n      - name: n\n     - name: m\n"},
	{"top level sequence", false, "- name: x\n"},
	{"indented document", false, "  sites:\n    - name: x\n"},
	{"value after marker", false, "--- sites:\n"},
	{"directive", false, "%YAML 1.2\n---\nsites:\n  - name: x\n"},
	{"key without space", false, "sites:\n  - name:x\n"},
	{"colon at end of value", false, "sites:\n  - name: x:\n"},
	{"mapping in value", false, "sites:\n  - name: a: b\n"},
	{"entry on the next line", false, "sites:\n  -\n    name: x\n"},
	{"nested sequence", false, "sites:\n  - - name: x\n"},
	{"scalar for a site", false, "sites:\n  - x\n"},
	{"long key", false, "sites:\n  - name: " + string(make([]byte, 0)) + longWord(1100) + "\n"},
	{"source is not a field", false, "sites:\n  - name: x\n    source: y\n"},
	{"syntax error in a later document", false, "sites:\n  - name: x\n---\nsites: [\n"},
}

func longWord(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a'
	}

	return string(b)
}

// TestFastDecodeMatchesYAML holds the fast path to yaml.v3: over a corpus
// of good and bad files, and the simulator's inventory (with windows),
// Parse gives the same entries and byte-identical errors as decoding with
// yaml.v3 alone, and the fast path takes exactly the files it should.
func TestFastDecodeMatchesYAML(t *testing.T) {
	for _, tc := range fastCorpus {
		t.Run(tc.name, func(t *testing.T) {
			checkBothPaths(t, []byte(tc.doc), tc.fast)
		})
	}

	t.Run("sim inventory with windows", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, sim.WriteDir(dir, sim.Spec{
			Clusters: 1234, NodesPerCluster: 3,
			Windows: []window.Window{{Days: []string{"mon", "sat"}, Start: "02:00", Duration: "4h"}, {Start: "22:30", Duration: "90m"}},
		}, sim.Behaviour{}, nil))

		data, err := os.ReadFile(filepath.Join(dir, "inventory.yaml"))
		require.NoError(t, err)
		f, docs := checkBothPaths(t, data, true)
		require.Equal(t, 3, docs) // 500 clusters a document
		require.Len(t, f.Clusters, 1234)
		assert.Equal(t, "02:00", f.Sites[0].Windows[0].Start)
	})
}

func checkBothPaths(t *testing.T, data []byte, fast bool) (inventory.File, int) {
	t.Helper()

	want, docs, wantErr := inventory.DecodeYAML("inv.yaml", data)
	got, ok := inventory.FastDecode(data)
	require.Equal(t, fast, ok, "fast path taken")

	if ok {
		require.NoError(t, wantErr)
		require.Equal(t, want, got)
	}

	// Parse, whichever path it takes, against yaml.v3 alone.
	inv, err := inventory.Parse("inv.yaml", data)
	if wantErr != nil {
		require.EqualError(t, err, wantErr.Error())

		return inventory.File{}, 0
	}

	require.NoError(t, err)

	old := &inventory.Inventory{}
	for _, s := range want.Sites {
		s.Source = "inv.yaml"
		old.Sites = append(old.Sites, s)
	}

	for _, c := range want.Clusters {
		c.Source = "inv.yaml"
		if c.Talosconfig != "" {
			c.Talosconfig = inv.Clusters[len(old.Clusters)].Talosconfig // resolved alike, checked in TestLoadDirectoryMergesFiles
		}

		old.Clusters = append(old.Clusters, c)
	}

	assert.Equal(t, old.Sites, inv.Sites)
	assert.Equal(t, old.Clusters, inv.Clusters)

	return got, docs
}

// FuzzFastDecode: whatever the fast path accepts, yaml.v3 accepts too and
// decodes to the same documents.
func FuzzFastDecode(f *testing.F) {
	for _, tc := range fastCorpus {
		f.Add([]byte(tc.doc))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		got, ok := inventory.FastDecode(data)
		if !ok {
			return
		}

		want, _, err := inventory.DecodeYAML("inv.yaml", data)
		require.NoError(t, err, "fast path took a file yaml.v3 refuses")
		require.Equal(t, want, got)
	})
}
