package node_test

import (
	"context"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/node"
)

func TestOperationsRefusedWhileRebootPending(t *testing.T) {
	n := node.New(io.Discard, nil)
	ctx := context.Background()

	// before anything is scheduled the call runs (and fails: no ESP here)
	_, err := n.Upgrade(ctx, "10.0.2.100:5000/lab/installer:1.1.0")
	require.ErrorContains(t, err, "ESP not mounted")

	require.NoError(t, n.Reboot(ctx, false))

	_, err = n.Upgrade(ctx, "10.0.2.100:5000/lab/installer:1.1.0")
	require.ErrorIs(t, err, node.ErrInProgress)
	require.Contains(t, err.Error(), "in progress", "fleetctl matches on this text")

	_, err = n.Install(ctx, "10.0.2.100:5000/lab/installer:1.1.0")
	require.ErrorIs(t, err, node.ErrInProgress)

	_, err = n.Rollback(ctx)
	require.ErrorIs(t, err, node.ErrInProgress)
}

// LifecycleService.Upgrade installs only what ImageService.Pull brought.
func TestInstallNeedsPulledImage(t *testing.T) {
	n := node.New(io.Discard, nil)

	_, err := n.Install(context.Background(), "10.0.2.100:5000/lab/installer:1.1.0")
	require.ErrorIs(t, err, node.ErrNotPulled)
	require.ErrorContains(t, err, "image 10.0.2.100:5000/lab/installer:1.1.0 was not pulled; pull it first")
	require.Empty(t, n.Images())
}
