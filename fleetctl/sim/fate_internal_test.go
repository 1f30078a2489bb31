package sim

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// The fate kept per node is the hash of its last upgrade's version, through
// upgrades, rollbacks, reboots and a replay of the journal.
func TestKeptFateIsTheLastUpgradesHash(t *testing.T) {
	dir := t.TempDir()
	b := Behaviour{InitialVersion: "v1", Seed: 42, FailRate: 0.3, HangRate: 0.2}

	f, err := Open(dir, b)
	require.NoError(t, err)

	check := func(f *Fleet) {
		t.Helper()

		for key, n := range f.nodes {
			if n.lastKind == 'U' {
				require.Equal(t, f.fate(key, n.versions[len(n.versions)-1]), n.fate, key)
			}
		}
	}

	for i := range 200 {
		key := fmt.Sprintf("c%d/n0", i)
		require.NoError(t, f.record(key, 'U', "v2", ""))

		switch i % 4 {
		case 1:
			require.NoError(t, f.record(key, 'R', "", ""))
			require.NoError(t, f.record(key, 'U', "v3", ""))
		case 2:
			require.NoError(t, f.record(key, 'U', "v3", ""))
			require.NoError(t, f.record(key, 'R', "", ""))
		case 3:
			require.NoError(t, f.record(key, 'B', "", ""))
		}
	}

	check(f)
	require.NoError(t, f.Close())

	g, err := Open(dir, b)
	require.NoError(t, err)
	t.Cleanup(func() { g.Close() })
	require.Len(t, g.nodes, 200)
	check(g)
}
