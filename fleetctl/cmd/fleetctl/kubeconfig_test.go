package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
)

// A plan with health.kubernetes is refused before anything is recorded when
// a selected cluster has no kubeconfig beside its talosconfig.
func TestStartNeedsKubeconfigsForKubernetesGate(t *testing.T) {
	dir := t.TempDir()
	tc := filepath.Join(dir, "ber-1-a", "talosconfig")
	require.NoError(t, os.MkdirAll(filepath.Dir(tc), 0o700))
	require.NoError(t, os.WriteFile(tc, nil, 0o600))

	inv := &inventory.Inventory{Clusters: []inventory.Cluster{{Name: "ber-1-a", Source: "fleet.yaml", Talosconfig: tc}}}
	a := &plan.Assignment{Waves: []plan.WaveAssignment{{Clusters: []string{"ber-1-a"}}}}
	p := &plan.Plan{Source: "plan.yaml", Health: plan.HealthGate{Kubernetes: true}}

	err := checkKubeconfigs(p, inv, a, "talos")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `fleet.yaml: cluster "ber-1-a": talosconfig: plan plan.yaml sets health.kubernetes, but `+filepath.Join(dir, "ber-1-a", "kubeconfig")+" is missing")
	assert.Equal(t, ExitBadInput, exitCode(bad(err)))

	assert.NoError(t, checkKubeconfigs(p, inv, a, "sim:/tmp/x"), "the simulator checks clusters in-process")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "ber-1-a", "kubeconfig"), nil, 0o600))
	assert.NoError(t, checkKubeconfigs(p, inv, a, "talos"))
}
