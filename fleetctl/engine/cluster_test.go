package engine_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Finding 7 of issue 13: a rebuild published under the same tag was taken
// for "already at" and never installed, because only tags were compared.
// Nodes that report their image are judged by its digest.
func TestSameTagOtherBuildIsUpgraded(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 2, NodesPerCluster: 2},
		sim.Behaviour{InitialVersion: v2, InitialDigest: "sha256:" + strings.Repeat("0", 64)}, nil)

	res, err := engine.Run(t.Context(), f.opts())
	require.NoError(t, err, "%+v", res)
	assert.Equal(t, 4, res.Done)

	for key, c := range f.fleet.Counts() {
		assert.Equal(t, 1, c.Upgrades, "%s: the same tag with another digest must be installed", key)
	}

	img, err := f.fleet.Image("c00000/n0")
	require.NoError(t, err)
	assert.Equal(t, plan.ImageDigest(sim.Image(v2)), img.Digest)
}

// The same image (digest equal) is still "already at": nothing is sent.
func TestSameImageIsAlreadyAt(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 2},
		sim.Behaviour{InitialVersion: v2, InitialDigest: plan.ImageDigest(sim.Image(v2))}, nil)

	res, err := engine.Run(t.Context(), f.opts())
	require.NoError(t, err, "%+v", res)
	assert.Equal(t, 2, res.Done)
	assert.Empty(t, f.fleet.Counts()["c00000/n0"].Upgrades)
}

// Finding 7 of issue 13: the gate did not look at the cluster. With
// health.kubernetes the Kubernetes node must be Ready and, on control plane
// nodes, the static pods ready and etcd complete; each fault of the
// simulator's Talos-like mode fails the gate with its reason.
func TestGateChecksKubernetesAndEtcd(t *testing.T) {
	for fault, want := range map[string]string{
		"":                    "",
		sim.FaultNodeNotReady: "kubernetes node n0 not Ready: SIMULATED KubeletNotReady",
		sim.FaultStaticPod:    "static pod kube-apiserver Running (ready=false)",
		sim.FaultEtcdMember:   "etcd does not list n0 as a member",
	} {
		t.Run("fault="+fault, func(t *testing.T) {
			b := sim.Behaviour{TalosLike: true}
			if fault != "" {
				b.KubeFaults = map[string]string{v2: fault}
			}

			f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 2}, b, func(p *plan.Plan) {
				p.Waves = []plan.Wave{{Name: "all", Percent: 100}}
				p.Budget = plan.Budget{}
				p.Health.Kubernetes = true
			})

			o := f.opts() // the sim driver is also its ClusterOpener

			res, err := engine.Run(t.Context(), o)
			if want == "" {
				require.NoError(t, err, "%+v", res)
				assert.Equal(t, 2, res.Done)

				return
			}

			require.ErrorIs(t, err, engine.ErrHalted)

			nodes, err := f.st.Nodes(t.Context(), res.RolloutID)
			require.NoError(t, err)
			assert.Equal(t, store.NodeFailed, nodes[0].State, "the control plane node goes first and fails")
			assert.Contains(t, nodes[0].Error, "health gate timed out")
			assert.Contains(t, nodes[0].Error, want)
			assert.True(t, nodes[0].RolledBack, "it ran the new image: rolled back")
		})
	}
}

func TestKubernetesGateNeedsAClusterChecker(t *testing.T) {
	f := newFixture(t, sim.Spec{Clusters: 1, NodesPerCluster: 1}, sim.Behaviour{}, func(p *plan.Plan) {
		p.Health.Kubernetes = true
	})

	o := f.opts()
	inner := o.Driver
	o.Driver = driver.FactoryFunc(inner.Open) // a driver without cluster checks

	_, err := engine.Run(t.Context(), o)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `the plan sets health.kubernetes but driver "sim" cannot check clusters`)
	assert.Empty(t, f.fleet.Counts(), "no node was touched")
}
