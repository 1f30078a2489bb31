package qemutests

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// rollout runs fleetctl's engine over two lab nodes with the real Talos
// machine API driver (mTLS), a canary wave then the rest.
func rollout(ctx context.Context, t *testing.T, nodes []*Machine, variant string) (engine.Result, *store.Store, error) {
	t.Helper()

	var endpoints []string
	for _, m := range nodes {
		endpoints = append(endpoints, m.vm.APIEndpoint())
	}

	inv := inventory.Lab(filepath.Join(suite.Keys, "talosconfig"), endpoints...)

	p := &plan.Plan{
		Name:    "lab-" + variant,
		Image:   suite.PushInstaller(t, variant),
		Version: suite.Images[variant].Record.Version,
		Waves:   []plan.Wave{{Name: "canary", Count: 1}, {Name: "rest", Percent: 100}},
		Health:  plan.HealthGate{Timeout: plan.Duration(4 * time.Minute), Interval: plan.Duration(2 * time.Second)},
	}
	p.Default()
	require.NoError(t, p.Validate())

	st, err := store.Open(filepath.Join(t.TempDir(), "fleet.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() }) //nolint:errcheck

	res, err := engine.Run(ctx, engine.Options{Inventory: inv, Plan: p, Store: st, Driver: talos.NewFactory(), DriverName: "talos", Actor: "qemu-tests"})

	return res, st, err
}

// Fleet scenario: a two-wave rollout v1 -> v2 over two lab nodes succeeds;
// with a bad v2 the canary falls back to v1 by itself, the gate sees that
// from the node's boot ID (Talos's COSI BootID), the rollout halts by
// itself and the second node is never touched.
func TestFleetRollout(t *testing.T) {
	t.Parallel()

	g := Golden(t)

	t.Run("good v2 reaches every node", func(t *testing.T) {
		t.Parallel()
		ctx := scenario(t)
		reserveVMs(ctx, t, 2)
		nodes := []*Machine{g.Clone(t, "fleet-a"), g.Clone(t, "fleet-b")}

		for _, m := range nodes {
			m.Boot(ctx, BootOptions{})
		}

		for _, m := range nodes {
			require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)
		}

		res, _, err := rollout(ctx, t, nodes, "v2")
		require.NoError(t, err)
		require.Equal(t, 2, res.Done, "result: %+v", res)
		require.Zero(t, res.Failed)

		for _, m := range nodes {
			v, err := m.Client(ctx).Version(ctx)
			require.NoError(t, err)
			// the image version is in Sha; Tag is the Talos release labos stands in for
			require.Equal(t, "2.0.0", v.Messages[0].Version.Sha)
			require.Equal(t, "v1.14.1", v.Messages[0].Version.Tag)
		}
	})

	t.Run("bad v2 halts after the canary", func(t *testing.T) {
		t.Parallel()
		ctx := scenario(t)
		reserveVMs(ctx, t, 2)
		nodes := []*Machine{g.Clone(t, "fleet-c"), g.Clone(t, "fleet-d")}

		for _, m := range nodes {
			m.Boot(ctx, BootOptions{})
		}

		for _, m := range nodes {
			require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)
		}

		res, st, err := rollout(ctx, t, nodes, "v2-healthfail")
		require.True(t, errors.Is(err, engine.ErrHalted), "rollout must halt on its failure budget, got %v (%+v)", err, res)
		require.Equal(t, 1, res.Failed)
		require.Equal(t, 1, res.Pending, "the second node must be left alone")

		ns, err := st.Nodes(ctx, res.RolloutID)
		require.NoError(t, err)

		untouched := 0

		for _, n := range ns {
			if n.UpgradeCalls == 0 {
				untouched++
			}

			// The canary rebooted back onto v1: the driver sees the new boot ID
			// with the old version and the gate fails at once instead of
			// waiting out its 4 minutes.
			if n.State == store.NodeFailed {
				require.Contains(t, n.Error, "fell back", "the gate must see the fallback, not time out: %+v", n)
			}
		}

		require.Equal(t, 1, untouched, "exactly one node must never have been asked to upgrade: %+v", ns)

		// Both nodes run v1 again: the canary fell back (or was rolled back), the other never moved.
		for _, m := range nodes {
			v, err := m.Client(ctx).Version(ctx)
			require.NoError(t, err)
			require.Equal(t, "1.0.0", v.Messages[0].Version.Sha)
		}
	})
}
