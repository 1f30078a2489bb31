package sim_test

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/site"
)

// ServeOn answers as the node it is given, on the caller's listener, with
// the caller's server options in effect and client certificates required.
func TestServeOnCallerListener(t *testing.T) {
	dir := t.TempDir()

	creds, err := site.Generate("sim", []string{"127.0.0.1"})
	require.NoError(t, err)
	require.NoError(t, creds.Write(dir, false))

	tlsCfg, err := site.ServerTLS(creds.Bundle, []net.IP{net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)

	fleet, err := sim.Open("", sim.Behaviour{InitialVersion: "v1.0.0"})
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	var (
		mu    sync.Mutex
		calls []string
	)

	count := grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		mu.Lock()
		calls = append(calls, filepath.Base(info.FullMethod))
		mu.Unlock()

		return h(ctx, req)
	})

	srv := sim.ServeOn(fleet, "c1/n0", lis, tlsCfg, count)
	t.Cleanup(srv.Stop)

	tgt := driver.Target{Cluster: "c1", Node: "n0", Endpoint: lis.Addr().String(), Talosconfig: filepath.Join(dir, site.TalosconfigFile)}

	n, err := talos.NewFactory().Open(t.Context(), tgt)
	require.NoError(t, err)

	defer n.Close()

	require.NoError(t, n.Upgrade(t.Context(), sim.Image("v2.0.0")))

	v, err := n.Version(t.Context())
	require.NoError(t, err)
	assert.Equal(t, "v2.0.0", v)
	assert.Equal(t, sim.Counts{Upgrades: 1}, fleet.Counts()["c1/n0"], "the upgrade reached the node key ServeOn was given")

	mu.Lock()
	assert.Equal(t, []string{"Upgrade", "Version"}, calls)
	mu.Unlock()

	// Credentials of another cluster are refused (client certificates are required).
	other := t.TempDir()
	oc, err := site.Generate("other", []string{"127.0.0.1"})
	require.NoError(t, err)
	require.NoError(t, oc.Write(other, false))

	tgt.Talosconfig = filepath.Join(other, site.TalosconfigFile)
	n2, err := talos.NewFactory().Open(t.Context(), tgt)
	require.NoError(t, err)

	defer n2.Close()

	_, err = n2.Version(t.Context())
	require.ErrorContains(t, err, "certificate")
}
