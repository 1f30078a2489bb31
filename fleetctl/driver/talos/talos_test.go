package talos_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/site"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// servedFleet serves a simulated fleet over the machine API with mTLS and
// writes the talosconfig clients need.
func servedFleet(t *testing.T, spec sim.Spec, b sim.Behaviour) (*inventory.Inventory, *sim.Fleet, string) {
	t.Helper()

	dir := t.TempDir()

	creds, err := site.Generate("sim", []string{"127.0.0.1"})
	require.NoError(t, err)
	require.NoError(t, creds.Write(dir, false))

	tlsCfg, err := site.ServerTLS(creds.Bundle, []net.IP{net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)

	fleet, err := sim.Open(dir, b)
	require.NoError(t, err)
	t.Cleanup(func() { fleet.Close() })

	f := sim.Inventory(spec)

	var keys []string

	for _, c := range f.Clusters {
		for _, n := range c.Nodes {
			keys = append(keys, sim.Key(c.Name, n.Name))
		}
	}

	srv, err := sim.Serve(fleet, keys, tlsCfg)
	require.NoError(t, err)
	t.Cleanup(srv.Close)

	for i := range f.Clusters {
		c := &f.Clusters[i]
		c.Talosconfig = filepath.Join(dir, site.TalosconfigFile)

		for j := range c.Nodes {
			c.Nodes[j].Endpoint = srv.Endpoints[sim.Key(c.Name, c.Nodes[j].Name)]
		}
	}

	inv := &inventory.Inventory{Sites: f.Sites, Clusters: f.Clusters}
	require.NoError(t, inv.Validate())

	return inv, fleet, dir
}

func TestDriverCallsOverMTLS(t *testing.T) {
	inv, fleet, _ := servedFleet(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{InitialVersion: "v1.0.0"})
	c := inv.Clusters[0]
	tgt := driver.Target{Cluster: c.Name, Node: c.Nodes[0].Name, Endpoint: c.Nodes[0].Endpoint, Talosconfig: c.Talosconfig}

	n, err := talos.NewFactory().Open(t.Context(), tgt)
	require.NoError(t, err)

	defer n.Close()

	v, err := n.Version(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "v1.0.0", v)

	h, err := n.Health(t.Context())
	require.NoError(t, err)
	assert.True(t, h.Healthy())
	assert.Len(t, h.Services, 5)

	require.NoError(t, n.Upgrade(t.Context(), sim.Image("v2.0.0")))

	v, err = n.Version(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "v2.0.0", v)

	require.NoError(t, n.Rollback(t.Context()))

	v, err = n.Version(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "v1.0.0", v)
	assert.Equal(t, sim.Counts{Upgrades: 1, Rollbacks: 1}, fleet.Counts()[sim.Key(tgt.Cluster, tgt.Node)])
}

func TestDriverMapsInProgress(t *testing.T) {
	inv, _, _ := servedFleet(t, sim.Spec{Clusters: 1, NodesPerCluster: 1},
		sim.Behaviour{InitialVersion: "v1.0.0", StageTime: sim.Duration(time.Minute)})
	c := inv.Clusters[0]

	n, err := talos.NewFactory().Open(t.Context(), driver.Target{Cluster: c.Name, Node: "n0", Endpoint: c.Nodes[0].Endpoint, Talosconfig: c.Talosconfig})
	require.NoError(t, err)

	defer n.Close()

	require.NoError(t, n.Upgrade(t.Context(), sim.Image("v2.0.0")))
	require.ErrorIs(t, n.Upgrade(t.Context(), sim.Image("v2.0.0")), driver.ErrInProgress)
}

func TestDriverRejectsForeignCredentials(t *testing.T) {
	inv, _, _ := servedFleet(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{InitialVersion: "v1.0.0"})

	// Credentials from another cluster's CA: the server must refuse them and
	// the client must refuse the server.
	other := t.TempDir()
	creds, err := site.Generate("other", []string{"127.0.0.1"})
	require.NoError(t, err)
	require.NoError(t, creds.Write(other, false))

	c := inv.Clusters[0]

	n, err := talos.NewFactory().Open(t.Context(), driver.Target{Cluster: c.Name, Node: "n0", Endpoint: c.Nodes[0].Endpoint, Talosconfig: filepath.Join(other, site.TalosconfigFile)})
	require.NoError(t, err)

	defer n.Close()

	_, err = n.Version(t.Context())
	require.Error(t, err)
}

// TestRolloutOverMachineAPIAtScale drives a few hundred simulated nodes
// through the real client, TLS included.
func TestRolloutOverMachineAPIAtScale(t *testing.T) {
	inv, fleet, dir := servedFleet(t, sim.Spec{Clusters: 100, NodesPerCluster: 3},
		sim.Behaviour{InitialVersion: "v1.0.0", Seed: 3, FailRate: 0.02})

	p := &plan.Plan{
		Name: "scale", Image: sim.Image("v2.0.0"), Version: "v2.0.0",
		Waves: []plan.Wave{
			{Name: "canary", Count: 2, MaxFailures: 1},
			{Name: "rest", Percent: 100, MaxFailurePercent: 10},
		},
		Concurrency: 50, MaxUnavailable: 2,
		Health: plan.HealthGate{Timeout: plan.Duration(300 * time.Millisecond), Interval: plan.Duration(10 * time.Millisecond)},
		Budget: plan.Budget{MaxFailurePercent: 10},
	}
	p.Default()
	require.NoError(t, p.Validate())

	st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{})
	require.NoError(t, err)

	defer st.Close()

	res, err := engine.Run(t.Context(), engine.Options{Inventory: inv, Plan: p, Store: st, Driver: talos.NewFactory(), DriverName: "talos"})
	require.NoError(t, err)
	assert.Equal(t, 300, res.Nodes)
	assert.Equal(t, 300, res.Done+res.Failed+res.Skipped)
	assert.Positive(t, res.Failed, "2% of 300 nodes fail with seed 3")
	assert.Equal(t, res.Failed, res.RolledBack)

	for key, c := range fleet.Counts() {
		assert.LessOrEqual(t, c.Upgrades, 1, "node %s", key)
	}
}

// TestTwoNodeLabShape runs the lab scenario's shape against two simulated
// nodes served over the machine API: the API qemu-tests use with real VMs.
func TestTwoNodeLabShape(t *testing.T) {
	for _, tc := range []struct {
		name    string
		bad     []string
		wantErr error
		want    []sim.Counts // per node
	}{
		{name: "v1 to v2 succeeds in two waves", want: []sim.Counts{{Upgrades: 1}, {Upgrades: 1}}},
		{name: "bad v2 halts at the canary", bad: []string{"v2.0.0"}, wantErr: engine.ErrHalted, want: []sim.Counts{{Upgrades: 1, Rollbacks: 1}, {}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			served, fleet, dir := servedFleet(t, sim.Spec{Clusters: 2, NodesPerCluster: 1},
				sim.Behaviour{InitialVersion: "v1.0.0", BadVersions: tc.bad, RebootTime: sim.Duration(50 * time.Millisecond)})

			inv := inventory.Lab(served.Clusters[0].Talosconfig, served.Clusters[0].Nodes[0].Endpoint, served.Clusters[1].Nodes[0].Endpoint)
			require.NoError(t, inv.Validate())

			p := &plan.Plan{
				Name: "lab", Image: sim.Image("v2.0.0"), Version: "v2.0.0",
				Waves:  []plan.Wave{{Name: "canary", Count: 1}, {Name: "rest", Percent: 100}},
				Health: plan.HealthGate{Timeout: plan.Duration(time.Second), Interval: plan.Duration(20 * time.Millisecond)},
			}
			p.Default()
			require.NoError(t, p.Validate())

			st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{})
			require.NoError(t, err)

			defer st.Close()

			res, err := engine.Run(t.Context(), engine.Options{Inventory: inv, Plan: p, Store: st, Driver: talos.NewFactory(), DriverName: "talos"})
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
			}

			assert.False(t, res.Simulated, "the talos driver is not marked simulated")

			// servedFleet names simulated nodes after its own inventory: c00000/n0 and c00001/n0.
			counts := fleet.Counts()
			assert.Equal(t, tc.want[0], counts["c00000/n0"])
			assert.Equal(t, tc.want[1], counts["c00001/n0"])
		})
	}
}

// TestDriverUsesOnlyTalosCalls: the driver reads a node's image version
// from Version (no labos-only status document), and does not claim to know
// about fallbacks, which a Talos node cannot report.
func TestDriverUsesOnlyTalosCalls(t *testing.T) {
	inv, fleet, _ := servedFleet(t, sim.Spec{Clusters: 1, NodesPerCluster: 1},
		sim.Behaviour{InitialVersion: "v1.0.0", FallbackVersions: []string{"v2.0.0"}})
	c := inv.Clusters[0]

	n, err := talos.NewFactory().Open(t.Context(), driver.Target{Cluster: c.Name, Node: "n0", Endpoint: c.Nodes[0].Endpoint, Talosconfig: c.Talosconfig})
	require.NoError(t, err)

	defer n.Close()

	fr, ok := n.(driver.FallbackReporter)
	require.True(t, ok, "the talos driver tells a fallback from the node's boot ID")

	require.NoError(t, fleet.Upgrade(sim.Key(c.Name, "n0"), "v2.0.0"))

	v, err := n.Version(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "v1.0.0", v, "back on the old version, read from Version's Sha")

	// the upgrade came from elsewhere (a fleetctl before a restart): this
	// handle has no boot ID from before it and says it cannot tell
	_, err = fr.FellBackFrom(t.Context(), "v2.0.0")
	require.ErrorContains(t, err, "no boot ID from before an upgrade request of this handle")
}

// TestFellBackFromBootID: a Talos node publishes its boot ID (COSI BootID).
// The driver notes it before its upgrade request; a node that rebooted
// since and runs another version fell back, one that has not rebooted yet
// (still installing) or came back on the target did not. A rollback
// reboots too and is not mistaken for a fallback; a node that publishes no
// boot ID leaves the driver unable to tell.
func TestFellBackFromBootID(t *testing.T) {
	const stage, reboot = 400 * time.Millisecond, 200 * time.Millisecond

	open := func(t *testing.T, b sim.Behaviour) driver.Node {
		t.Helper()

		// n1: a single control plane node would need preserve, which is not what this is about
		n, _, _ := openServedNode(t, 2, 1, b)

		return n
	}

	talosLike := sim.Behaviour{InitialVersion: "v1.0.0", TalosLike: true, FallbackVersions: []string{"v2.0.0"},
		StageTime: sim.Duration(stage), RebootTime: sim.Duration(reboot)}

	t.Run("fell back", func(t *testing.T) {
		n := open(t, talosLike)
		fr := n.(driver.FallbackReporter)

		require.NoError(t, n.Upgrade(t.Context(), sim.Image("v2.0.0")))

		yes, err := fr.FellBackFrom(t.Context(), "v2.0.0")
		require.NoError(t, err)
		assert.False(t, yes, "still installing (same boot, old version): not a fallback yet")

		time.Sleep(stage + reboot + 100*time.Millisecond)

		yes, err = fr.FellBackFrom(t.Context(), "v2.0.0")
		require.NoError(t, err)
		assert.True(t, yes, "rebooted and back on v1.0.0: fell back")
	})

	t.Run("came up on the target", func(t *testing.T) {
		n := open(t, talosLike)
		fr := n.(driver.FallbackReporter)

		require.NoError(t, n.Upgrade(t.Context(), sim.Image("v3.0.0")))
		time.Sleep(stage + reboot + 100*time.Millisecond)

		yes, err := fr.FellBackFrom(t.Context(), "v3.0.0")
		require.NoError(t, err)
		assert.False(t, yes, "rebooted onto the target")

		require.NoError(t, n.Rollback(t.Context()))
		time.Sleep(reboot + 100*time.Millisecond)

		_, err = fr.FellBackFrom(t.Context(), "v3.0.0")
		require.ErrorContains(t, err, "no boot ID from before an upgrade request", "the rollback's reboot is no fallback")
	})

	t.Run("no boot ID published", func(t *testing.T) {
		b := talosLike
		b.TalosLike = false // the simulator then serves no COSI State, as a node without it

		n := open(t, b)
		fr := n.(driver.FallbackReporter)

		require.NoError(t, n.Upgrade(t.Context(), sim.Image("v2.0.0")))
		time.Sleep(stage + reboot + 100*time.Millisecond)

		_, err := fr.FellBackFrom(t.Context(), "v2.0.0")
		require.ErrorContains(t, err, "no boot ID from before an upgrade request")
	})
}

// TestGateSeesTalosFallbackAtOnce: with the talos driver a canary that
// reboots back onto its old image fails its gate as a fallback as soon as
// it is back, not when the gate's timeout runs out, and the rollout halts
// with the rest untouched.
func TestGateSeesTalosFallbackAtOnce(t *testing.T) {
	inv, fleet, dir := servedFleet(t, sim.Spec{Clusters: 1, NodesPerCluster: 3},
		sim.Behaviour{InitialVersion: "v1.0.0", TalosLike: true, FallbackVersions: []string{"v2.0.0"},
			StageTime: sim.Duration(300 * time.Millisecond), RebootTime: sim.Duration(300 * time.Millisecond)})

	res, st, err := canaryThenRestGated(t, inv, dir, "fallback", talos.NewFactory(),
		plan.HealthGate{Timeout: plan.Duration(time.Minute), Interval: plan.Duration(50 * time.Millisecond)})
	require.ErrorIs(t, err, engine.ErrHalted, "%+v", res)
	require.Equal(t, 1, res.Failed, "%+v", res)

	ns, err := st.Nodes(t.Context(), res.RolloutID)
	require.NoError(t, err)

	failed := 0

	for _, n := range ns {
		if n.State == store.NodeFailed {
			failed++

			assert.Contains(t, n.Error, "node tried v2.0.0 and fell back", "failed as a fallback, not on the gate's timeout")
			assert.False(t, n.RolledBack && n.Error == "", "%+v", n)
		}
	}

	require.Equal(t, 1, failed)

	upgrades := 0
	for _, c := range fleet.Counts() {
		upgrades += c.Upgrades
		assert.Zero(t, c.Rollbacks, "a node back on its old image is not sent a rollback")
	}

	assert.Equal(t, 1, upgrades, "only the canary was asked")
}

func TestImageVersion(t *testing.T) {
	for _, tc := range []struct {
		info *machineapi.VersionInfo
		want string
	}{
		{&machineapi.VersionInfo{Tag: "v1.14.1", Sha: "1.2.0"}, "1.2.0"},   // labos: the image version in Sha
		{&machineapi.VersionInfo{Tag: "v1.14.1", Sha: "v2.0.0"}, "v2.0.0"}, // labos, v-prefixed image version
		{&machineapi.VersionInfo{Tag: "v1.14.1", Sha: "8a1e4f3c"}, "v1.14.1"},
		{&machineapi.VersionInfo{Tag: "v1.14.1", Sha: "8a1e4f3c-dirty"}, "v1.14.1"},
		{&machineapi.VersionInfo{Tag: "v1.14.1"}, "v1.14.1"},
	} {
		assert.Equal(t, tc.want, talos.ImageVersion(tc.info), "%+v", tc.info)
	}
}

// TestTalosLikeNodesPassOverMachineAPI is findings 6 and 7 of issue 13
// through the real client: Talos refuses to upgrade the control plane of a
// one-member etcd without preserve, and lists services without a health
// check as healthy=false/unknown=true. Both made every canary fail.
func TestTalosLikeNodesPassOverMachineAPI(t *testing.T) {
	inv, fleet, dir := servedFleet(t, sim.Spec{Clusters: 2, NodesPerCluster: 2},
		sim.Behaviour{InitialVersion: "v1.0.0", TalosLike: true})

	res, _, err := canaryThenRest(t, inv, dir, "talos-like", talos.NewFactory())
	require.NoError(t, err, "%+v", res)
	assert.Equal(t, 4, res.Done)

	for key, c := range fleet.Counts() {
		assert.Equal(t, 1, c.Upgrades, "node %s", key)
	}
}

// A node the inventory names by machine UUID is reached at the address the
// hub's registry gives when it is opened (its tunnel address); without a
// registry, or for a machine the hub does not know, the driver says which
// node and why instead of dialling anything.
func TestNodesByMachineUUIDResolvedAtOpen(t *testing.T) {
	inv, fleet, dir := servedFleet(t, sim.Spec{Clusters: 2, NodesPerCluster: 1}, sim.Behaviour{InitialVersion: "v1.0.0"})

	addrs := map[string]string{}

	for i := range inv.Clusters {
		n := &inv.Clusters[i].Nodes[0]
		uuid := fmt.Sprintf("5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c0%d", i)
		addrs[uuid] = n.Endpoint
		n.Endpoint, n.Machine = "", uuid
	}

	require.NoError(t, inv.Validate())

	var asked []string

	resolve := func(_ context.Context, uuid string) (string, error) {
		asked = append(asked, uuid)
		if ep, ok := addrs[uuid]; ok {
			return ep, nil
		}

		return "", fmt.Errorf("machine %s: not found", uuid)
	}

	res, st, err := canaryThenRest(t, inv, dir, "by-uuid", talos.NewFactory(talos.WithMachineResolver(resolve)))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Done, "%+v", res)
	assert.Len(t, fleet.Counts(), 2)

	for key, c := range fleet.Counts() {
		assert.Equal(t, 1, c.Upgrades, "node %s", key)
	}

	assert.Contains(t, asked, "5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c00")

	// the record keeps the machine's name, not an address the hub may change
	nodes, err := st.Nodes(t.Context(), res.RolloutID)
	require.NoError(t, err)
	assert.Equal(t, "machine:5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c00", nodes[0].Endpoint)

	c := inv.Clusters[0]
	tgt := driver.Target{Cluster: c.Name, Node: "n0", Endpoint: "machine:5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9cff", Talosconfig: c.Talosconfig}

	_, err = talos.NewFactory().Open(t.Context(), tgt)
	require.ErrorContains(t, err, "is named by machine UUID 5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9cff but no hub registry is open")

	_, err = talos.NewFactory(talos.WithMachineResolver(resolve)).Open(t.Context(), tgt)
	require.ErrorContains(t, err, c.Name+"/n0: resolving machine 5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9cff through the hub: machine 5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9cff: not found")
}

// TestTalosNodeReportsItsImage: the talos driver is a driver.ImageReporter.
// Talos reports no image digest, so the node's image is its version plus the
// image-factory schematic it publishes (COSI ImageFactorySchematic); a node
// that serves no COSI State, or has no schematic, reports the version alone.
func TestTalosNodeReportsItsImage(t *testing.T) {
	const (
		schV1 = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
		schV2 = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"
	)

	open := func(t *testing.T, b sim.Behaviour) (driver.ImageReporter, *sim.Fleet, string) {
		t.Helper()

		n, fleet, key := openServedNode(t, 1, 0, b)

		ir, ok := n.(driver.ImageReporter)
		require.True(t, ok, "the talos driver must report the running image")

		return ir, fleet, key
	}

	t.Run("schematic", func(t *testing.T) {
		ir, fleet, key := open(t, sim.Behaviour{InitialVersion: "v1.0.0", Schematics: map[string]string{"v1.0.0": schV1, "v2.0.0": schV2}})

		id, err := ir.Image(t.Context())
		require.NoError(t, err)
		assert.Equal(t, driver.ImageID{Version: "v1.0.0", Schematic: schV1}, id)

		require.NoError(t, fleet.Upgrade(key, "v2.0.0"))

		id, err = ir.Image(t.Context())
		require.NoError(t, err)
		assert.Equal(t, driver.ImageID{Version: "v2.0.0", Schematic: schV2}, id, "read again after the upgrade")
		assert.Empty(t, driver.Want{Version: "v2.0.0", Schematic: schV2}.Mismatch(id))
		assert.Contains(t, driver.Want{Version: "v2.0.0", Schematic: schV1}.Mismatch(id), "node runs schematic "+schV2)
	})

	t.Run("version without schematic resource", func(t *testing.T) {
		ir, _, _ := open(t, sim.Behaviour{InitialVersion: "v1.0.0", Schematics: map[string]string{"v2.0.0": schV2}})

		id, err := ir.Image(t.Context())
		require.NoError(t, err)
		assert.Equal(t, driver.ImageID{Version: "v1.0.0"}, id)
	})

	t.Run("no COSI State", func(t *testing.T) {
		ir, _, _ := open(t, sim.Behaviour{InitialVersion: "v1.0.0"})

		for range 2 { // the second answer comes without asking COSI again
			id, err := ir.Image(t.Context())
			require.NoError(t, err)
			assert.Equal(t, driver.ImageID{Version: "v1.0.0"}, id)
		}

		assert.Contains(t, driver.Want{Version: "v1.0.0", Schematic: schV1}.Mismatch(driver.ImageID{Version: "v1.0.0"}),
			"cannot be confirmed", "a plan naming a schematic is not satisfied by a node that reports none")
	})
}

// TestRolloutChecksSchematicOverMachineAPI: with the talos driver the gate
// compares the plan's schematic with what the node reports. A node that
// comes back on the target version but with another schematic fails.
func TestRolloutChecksSchematicOverMachineAPI(t *testing.T) {
	const want = "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"

	for _, tc := range []struct {
		name      string
		runs      string
		done, bad int
	}{
		{"same schematic", want, 2, 0},
		{"other schematic", "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, _, dir := servedFleet(t, sim.Spec{Clusters: 1, NodesPerCluster: 2},
				sim.Behaviour{InitialVersion: "v1.0.0", Schematics: map[string]string{"v2.0.0": tc.runs}})

			p := &plan.Plan{
				Name: "schematic", Image: sim.Image("v2.0.0"), Version: "v2.0.0", Schematic: want,
				Waves:  []plan.Wave{{Name: "all", Percent: 100}},
				Health: plan.HealthGate{Timeout: plan.Duration(300 * time.Millisecond), Interval: plan.Duration(10 * time.Millisecond)},
				Budget: plan.Budget{MaxFailurePercent: 100},
			}
			p.Default()
			require.NoError(t, p.Validate())

			st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{})
			require.NoError(t, err)

			defer st.Close()

			res, _ := engine.Run(t.Context(), engine.Options{Inventory: inv, Plan: p, Store: st, Driver: talos.NewFactory(), DriverName: "talos"})
			assert.Equal(t, tc.done, res.Done, "%+v", res)
			assert.Equal(t, tc.bad, res.Failed, "%+v", res)

			if tc.bad > 0 {
				nodes, err := st.Nodes(t.Context(), res.RolloutID)
				require.NoError(t, err)
				assert.Contains(t, nodes[0].Error, "node runs schematic "+tc.runs+", want "+want)
			}
		})
	}
}

// canaryThenRest rolls v2.0.0 out over inv with f: a canary of one node,
// then the rest, with a short health gate.
func canaryThenRest(t *testing.T, inv *inventory.Inventory, dir, name string, f *talos.Factory) (engine.Result, *store.Store, error) {
	t.Helper()

	return canaryThenRestGated(t, inv, dir, name, f, plan.HealthGate{Timeout: plan.Duration(2 * time.Second), Interval: plan.Duration(10 * time.Millisecond)})
}

// canaryThenRestGated is canaryThenRest with the given health gate.
func canaryThenRestGated(t *testing.T, inv *inventory.Inventory, dir, name string, f *talos.Factory, hg plan.HealthGate) (engine.Result, *store.Store, error) {
	t.Helper()

	p := &plan.Plan{
		Name: name, Image: sim.Image("v2.0.0"), Version: "v2.0.0",
		Waves:  []plan.Wave{{Name: "canary", Count: 1}, {Name: "rest", Percent: 100}},
		Health: hg,
	}
	p.Default()
	require.NoError(t, p.Validate())

	st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	res, err := engine.Run(t.Context(), engine.Options{Inventory: inv, Plan: p, Store: st, Driver: f, DriverName: "talos"})

	return res, st, err
}

// openServedNode serves a one-cluster simulated fleet of n nodes and opens
// node i through the driver; it returns the node, the fleet and its key.
func openServedNode(t *testing.T, n, i int, b sim.Behaviour) (driver.Node, *sim.Fleet, string) {
	t.Helper()

	inv, fleet, _ := servedFleet(t, sim.Spec{Clusters: 1, NodesPerCluster: n}, b)
	c := inv.Clusters[0]

	node, err := talos.NewFactory().Open(t.Context(), driver.Target{Cluster: c.Name, Node: c.Nodes[i].Name, Endpoint: c.Nodes[i].Endpoint, Talosconfig: c.Talosconfig})
	require.NoError(t, err)
	t.Cleanup(func() { node.Close() })

	return node, fleet, sim.Key(c.Name, c.Nodes[i].Name)
}
