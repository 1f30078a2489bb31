package qemutests

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/require"
)

// upgradeLifecycle upgrades the node to a variant's installer image the way
// talosctl v1.14.1 does for a node whose Talos version is 1.13 or later
// (cmd/talosctl/cmd/talos/upgrade.go): ImageService.Pull, then
// LifecycleService.Upgrade with the pulled image (progress messages and an
// exit code), then Reboot.
func upgradeLifecycle(ctx context.Context, t *testing.T, m *Machine, variant string) {
	t.Helper()

	ref := suite.PushInstaller(t, variant)
	c := m.Client(ctx)

	pull, err := c.ImageClient.Pull(ctx, &machine.ImageServicePullRequest{ImageRef: ref})
	require.NoError(t, err, "pull %s", ref)

	var pulled string

	for {
		resp, err := pull.Recv()
		if errors.Is(err, io.EOF) {
			break
		}

		require.NoError(t, err, "pull %s", ref)

		if n := resp.GetName(); n != "" {
			pulled = n
		}
	}

	require.NotEmpty(t, pulled, "ImageService.Pull of %s named no image", ref)

	up, err := c.LifecycleClient.Upgrade(ctx, &machine.LifecycleServiceUpgradeRequest{
		Source: &machine.InstallArtifactsSource{ImageName: pulled},
	})
	require.NoError(t, err, "LifecycleService.Upgrade to %s", pulled)

	var (
		msgs []string
		exit int32 = -1
	)

	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			break
		}

		require.NoError(t, err, "LifecycleService.Upgrade to %s", pulled)

		switch p := resp.GetProgress().GetResponse().(type) {
		case *machine.LifecycleServiceInstallProgress_Message:
			msgs = append(msgs, p.Message)
		case *machine.LifecycleServiceInstallProgress_ExitCode:
			exit = p.ExitCode
		}
	}

	require.Zero(t, exit, "LifecycleService.Upgrade to %s: %s", pulled, strings.Join(msgs, "\n"))

	require.NoError(t, c.Reboot(ctx), "reboot after the upgrade")
}
