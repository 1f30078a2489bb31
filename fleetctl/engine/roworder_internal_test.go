package engine

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Node rows are written in the order the nodes are upgraded in (wave, then
// the step of the cluster's sequence, then cluster order), so the nodes in
// flight together have neighbouring rows; ids stay those of the inventory
// order.
func TestRowOrderFollowsClusterSteps(t *testing.T) {
	var nodes []store.Node

	add := func(wave int, cluster string, roles ...string) {
		for i, r := range roles {
			nodes = append(nodes, store.Node{ID: len(nodes), Wave: wave, Cluster: cluster, Name: fmt.Sprintf("n%d", i), Role: r})
		}
	}

	cp, w := inventory.RoleControlPlane, inventory.RoleWorker
	add(0, "a", cp, w, w, w)
	add(0, "b", w, cp) // the control plane goes first whatever its place
	add(1, "c", cp, cp)
	add(1, "d", w)

	got := rowOrder(nodes, 2)

	var order []string
	for _, n := range got {
		order = append(order, fmt.Sprintf("%d:%s/%s#%d", n.Wave, n.Cluster, n.Name, n.ID))
	}

	assert.Equal(t, []string{
		// wave 0, step 0: each cluster's first control plane
		"0:a/n0#0", "0:b/n1#5",
		// step 1: a's first two workers (maxUnavailable 2), b's worker
		"0:a/n1#1", "0:a/n2#2", "0:b/n0#4",
		// step 2: a's last worker
		"0:a/n3#3",
		// wave 1
		"1:c/n0#6", "1:d/n0#8", "1:c/n1#7",
	}, order)

	require.Len(t, got, 9)
}
