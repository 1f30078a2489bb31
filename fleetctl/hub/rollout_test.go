package hub_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub/hubbench/tunnelroll"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
)

// A rollout over nodes the inventory names only by machine UUID reaches
// each node through the hub: the driver resolves the UUID in the hub's
// registry to the node's tunnel address, the host kernel routes it into
// the hub's TUN device, the hub's WireGuard carries it over the node's
// link (gRPC tunnel or UDP). Each node is upgraded exactly once, by a call
// that arrived on its tunnel address from the hub's.
func TestRolloutThroughTunnels(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	token := e.token("berlin")

	var nodes []tunnelroll.Node

	for i, tunnel := range []bool{true, true, false} {
		u := tunnelroll.UUID(i)
		p := e.peer(ctx, simpeer.Options{JoinToken: token, UUID: u, UniqueToken: u, Tunnel: tunnel})
		e.linkUp(ctx, p)
		require.Equal(t, e.h.ServerAddress(), p.ServerAddr)

		nodes = append(nodes, tunnelroll.Node{UUID: u, Peer: p})
	}

	f, err := tunnelroll.Serve(t.TempDir(), nodes)
	require.NoError(t, err)
	t.Cleanup(f.Close)

	// Check can fail: before the rollout nothing went anywhere.
	err = tunnelroll.Result{}.Check(f)
	require.ErrorContains(t, err, "0 of 3 nodes done")
	require.ErrorContains(t, err, "3 nodes not upgraded exactly once through their tunnel")

	res, err := tunnelroll.Run(ctx, e.st, f, netip.MustParsePrefix(e.cfg.Prefix), 2)
	require.NoError(t, err, "hub log:\n%s", e.logs)
	require.NoError(t, res.Check(f), "%+v\nhub log:\n%s", res, e.logs)

	assert.Equal(t, 3, res.Done)
	assert.Empty(t, res.Wrong)
	require.Len(t, res.Waves, 2)
	assert.Equal(t, "canary", res.Waves[0].Name)

	for _, n := range nodes {
		s := f.Served()[n.UUID]
		assert.Equal(t, 1, s.Upgrades, "machine %s", n.UUID)
		assert.Zero(t, s.Foreign, "machine %s: %s", n.UUID, s.LastForeign)
		assert.Greater(t, s.Calls, 1, "machine %s: version and health were read through the tunnel too", n.UUID)
	}

	// The rollout recorded the machines by name, not the addresses.
	recorded, err := e.st.Nodes(ctx, res.RolloutID)
	require.NoError(t, err)
	require.Len(t, recorded, 3)

	for _, r := range recorded {
		assert.Contains(t, r.Endpoint, "machine:1abf1ee7-")
	}
}
