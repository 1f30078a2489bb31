package main

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/api"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

type idleNode struct{ api.Node }

func (idleNode) Status() nodeapi.Status { return nodeapi.Status{} }

// serveLabos runs labos's API with rt in-process and writes a talosconfig
// for it; it returns the endpoint and the talosconfig path.
func serveLabos(t *testing.T, rt *api.Runtime) (string, string) {
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
		done <- api.Serve(ctx, lis, &api.Server{Node: idleNode{}, Runtime: rt, Tag: api.TalosTag, ImageVersion: "1.0.0"}, tlsCfg)
	}()

	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	crt, err := bundle.GenerateTalosAPIClientCertificate(role.MakeSet(role.Reader))
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), "talosconfig")
	require.NoError(t, clientconfig.NewConfig("lab", []string{lis.Addr().String()}, bundle.Certs.OS.Crt, crt).Save(path))

	return lis.Addr().String(), path
}

func TestCheckAPIReadsStateOverCOSI(t *testing.T) {
	rt, err := api.NewRuntime()
	require.NoError(t, err)
	require.NoError(t, rt.SetSecurityState(true, true))
	require.NoError(t, rt.SetVolume("STATE", block.VolumeStatusSpec{Phase: block.VolumePhaseReady, EncryptionProvider: block.EncryptionProviderLUKS2}))
	require.NoError(t, rt.SetMachineStatus(runtime.MachineStageRunning, nil))

	endpoint, talosconfig := serveLabos(t, rt)

	st, err := checkAPI(t.Context(), talosconfig, endpoint)
	require.NoError(t, err)
	require.Equal(t, "1.0.0", st.ImageVersion)
	require.True(t, st.SecureBoot)
	require.True(t, st.StateEncrypted)

	// a node that answers but is not ready fails the check, saying why
	require.NoError(t, rt.SetMachineStatus(runtime.MachineStageRunning, []runtime.UnmetCondition{{Name: "ebpf", Reason: "missing: map/RingBuf"}}))

	st, err = checkAPI(t.Context(), talosconfig, endpoint)
	require.EqualError(t, err, "node runs but is not ready: [ebpf: missing: map/RingBuf]")
	require.False(t, st.Ready)
}
