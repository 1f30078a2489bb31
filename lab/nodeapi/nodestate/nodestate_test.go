package nodestate_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/api"
	"github.com/labfleet/labfleet/lab/nodeapi"
	"github.com/labfleet/labfleet/lab/nodeapi/nodestate"
)

type idle struct{ api.Node }

func (idle) Status() nodeapi.Status { return nodeapi.Status{} }

// serve runs labos's API with rt and returns a reader's client for it.
func serve(t *testing.T, rt *api.Runtime) *client.Client {
	t.Helper()

	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	require.NoError(t, err)

	tlsCfg, err := api.TLSConfig(bundle.Certs.OS.Crt, bundle.Certs.OS.Key, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() {
		done <- api.Serve(ctx, lis, &api.Server{Node: idle{}, Runtime: rt, Tag: api.TalosTag, ImageVersion: "1.1.0"}, tlsCfg)
	}()

	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	crt, err := bundle.GenerateTalosAPIClientCertificate(role.MakeSet(role.Reader))
	require.NoError(t, err)

	c, err := client.New(ctx, client.WithConfig(clientconfig.NewConfig("lab", []string{lis.Addr().String()}, bundle.Certs.OS.Crt, crt)))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return c
}

func TestReadReadyNode(t *testing.T) {
	rt, err := api.NewRuntime()
	require.NoError(t, err)
	require.NoError(t, rt.SetSecurityState(true, true))
	require.NoError(t, rt.SetBootedEntry("lab-1.1.0.efi"))
	require.NoError(t, rt.SetVolume(nodestate.StateVolumeID, block.VolumeStatusSpec{Phase: block.VolumePhaseReady, EncryptionProvider: block.EncryptionProviderLUKS2}))
	require.NoError(t, rt.SetMachineStatus(runtime.MachineStageRunning, nil))

	s, err := nodestate.Read(t.Context(), serve(t, rt))
	require.NoError(t, err)
	require.Equal(t, nodestate.State{
		TalosVersion: "v1.14.1", ImageVersion: "1.1.0", SecureBoot: true, BootedWithUKI: true,
		Stage: "running", Ready: true, BootEntry: "lab-1.1.0.efi", StatePhase: "ready", StateEncrypted: true,
	}, s)
	require.NoError(t, s.Check())
}

func TestReadFailedUnlock(t *testing.T) {
	rt, err := api.NewRuntime()
	require.NoError(t, err)
	require.NoError(t, rt.SetVolume(nodestate.StateVolumeID, block.VolumeStatusSpec{
		Phase: block.VolumePhaseFailed, EncryptionProvider: block.EncryptionProviderLUKS2, ErrorMessage: "pcr-mismatch: PCR 11 policy refused",
	}))
	require.NoError(t, rt.SetMachineStatus(runtime.MachineStageRunning, []runtime.UnmetCondition{{Name: "tpm-unlock", Reason: "pcr-mismatch"}}))

	s, err := nodestate.Read(t.Context(), serve(t, rt))
	require.NoError(t, err)
	require.False(t, s.Ready)
	require.Equal(t, "failed", s.StatePhase)
	require.Equal(t, []string{"tpm-unlock: pcr-mismatch"}, s.Unmet)
	require.EqualError(t, s.Check(), "node runs but is not ready: [tpm-unlock: pcr-mismatch]")
	require.False(t, s.SecureBoot, "no SecurityState published: empty, not an error")
}
