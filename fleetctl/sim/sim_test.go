package sim_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/sim"
)

func TestUpgradeLifecycle(t *testing.T) {
	f, err := sim.Open("", sim.Behaviour{InitialVersion: "v1", StageTime: sim.Duration(50 * time.Millisecond), RebootTime: sim.Duration(50 * time.Millisecond)})
	require.NoError(t, err)

	v, err := f.Version("c/n")
	require.NoError(t, err)
	assert.Equal(t, "v1", v)

	require.NoError(t, f.Upgrade("c/n", "v2"))

	// Staging: still the old version, and a second request is refused as in progress.
	v, err = f.Version("c/n")
	require.NoError(t, err)
	assert.Equal(t, "v1", v)
	require.ErrorIs(t, f.Upgrade("c/n", "v2"), driver.ErrInProgress)

	require.Eventually(t, func() bool {
		_, err := f.Version("c/n")

		return err != nil
	}, time.Second, time.Millisecond, "rebooting nodes are unreachable")

	require.Eventually(t, func() bool {
		v, err := f.Version("c/n")

		return err == nil && v == "v2"
	}, time.Second, time.Millisecond)

	svcs, err := f.Services("c/n")
	require.NoError(t, err)
	assert.True(t, driver.Health{Services: svcs}.Healthy())
	assert.Equal(t, sim.Counts{Upgrades: 1}, f.Counts()["c/n"])
}

func TestBadVersionFailsAndRollsBack(t *testing.T) {
	f, err := sim.Open("", sim.Behaviour{InitialVersion: "v1", BadVersions: []string{"v2"}})
	require.NoError(t, err)

	require.ErrorIs(t, f.Rollback("c/n"), sim.ErrNoPrevious)
	require.NoError(t, f.Upgrade("c/n", "v2"))

	svcs, err := f.Services("c/n")
	require.NoError(t, err)
	assert.Equal(t, []string{"addons"}, driver.Health{Services: svcs}.Unhealthy())

	require.NoError(t, f.Rollback("c/n"))

	v, err := f.Version("c/n")
	require.NoError(t, err)
	assert.Equal(t, "v1", v)
}

func TestJournalSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	b := sim.Behaviour{InitialVersion: "v1"}

	f, err := sim.Open(dir, b)
	require.NoError(t, err)
	require.NoError(t, f.Upgrade("c/a", "v2"))
	require.NoError(t, f.Upgrade("c/b", "v2"))
	require.NoError(t, f.Rollback("c/b"))
	require.NoError(t, f.Close())

	g, err := sim.Open(dir, b)
	require.NoError(t, err)

	defer g.Close()

	assert.Equal(t, sim.Counts{Upgrades: 1}, g.Counts()["c/a"])
	assert.Equal(t, sim.Counts{Upgrades: 1, Rollbacks: 1}, g.Counts()["c/b"])

	v, err := g.Version("c/a")
	require.NoError(t, err)
	assert.Equal(t, "v2", v)

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)
	require.Len(t, events, 3)
	assert.Equal(t, "U", events[0].Kind)
	assert.Equal(t, "c/a", events[0].Node)
}

func TestFailuresAreDeterministicPerSeed(t *testing.T) {
	failed := func(seed int64) []string {
		f, err := sim.Open("", sim.Behaviour{InitialVersion: "v1", Seed: seed, FailRate: 0.1})
		require.NoError(t, err)

		var out []string

		for i := range 500 {
			key := sim.Key("c", string(rune('a'+i%26))+string(rune('a'+i/26)))
			require.NoError(t, f.Upgrade(key, "v2"))

			s, err := f.Services(key)
			require.NoError(t, err)

			if !(driver.Health{Services: s}).Healthy() {
				out = append(out, key)
			}
		}

		return out
	}

	a, b, c := failed(1), failed(1), failed(2)
	assert.Equal(t, a, b)
	assert.NotEqual(t, a, c)
	assert.InDelta(t, 50, len(a), 25, "about 10%% of 500")
}

func TestVersionOf(t *testing.T) {
	assert.Equal(t, "v2.0.0", sim.VersionOf(sim.Image("v2.0.0")))
	assert.Equal(t, "v1.2", sim.VersionOf("localhost:5000/installer:v1.2"))
	assert.Equal(t, "sha256:abc", sim.VersionOf("localhost:5000/installer@sha256:abc"))
}

// The digest an upgrade carried survives the journal (old 4-column lines
// still read), and a rollback reports the previous image's digest again.
func TestImageDigestJournalled(t *testing.T) {
	dir := t.TempDir()
	b := sim.Behaviour{InitialVersion: "v1", InitialDigest: "sha256:old"}

	f, err := sim.Open(dir, b)
	require.NoError(t, err)
	require.NoError(t, f.Upgrade("c/a", "v2"))
	require.NoError(t, f.UpgradeImage("c/b", "v2", "sha256:new", true))
	require.NoError(t, f.Close())

	f, err = sim.Open(dir, b)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })

	id, err := f.Image("c/b")
	require.NoError(t, err)
	assert.Equal(t, driver.ImageID{Version: "v2", Digest: "sha256:new"}, id)

	id, err = f.Image("c/a")
	require.NoError(t, err)
	assert.Equal(t, driver.ImageID{Version: "v2"}, id)

	require.NoError(t, f.Rollback("c/b"))

	id, err = f.Image("c/b")
	require.NoError(t, err)
	assert.Equal(t, driver.ImageID{Version: "v1", Digest: "sha256:old"}, id)

	ev, err := sim.ReadJournal(dir)
	require.NoError(t, err)
	require.Len(t, ev, 3)
	assert.Equal(t, "sha256:new", ev[1].Digest)
	assert.Empty(t, ev[0].Digest)
}

func TestKubeFaultsValidated(t *testing.T) {
	_, err := sim.Open("", sim.Behaviour{InitialVersion: "v1", KubeFaults: map[string]string{"v2": "cni"}})
	assert.ErrorContains(t, err, `sim.yaml: kubeFaults: v2: unknown fault "cni"`)
}
