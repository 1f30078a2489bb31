package api_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/lab/labos/api"
)

type fakeConfigurer struct {
	mu      sync.Mutex
	applied [][]byte
	dry     int
}

func (f *fakeConfigurer) ApplyConfig(_ context.Context, data []byte, dryRun bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	if string(data) == "broken" {
		return fmt.Errorf("%w: machine config: no v1alpha1 document", api.ErrInvalidConfig)
	}

	if dryRun {
		f.dry++

		return nil
	}

	if len(f.applied) > 0 {
		return api.ErrConfigured
	}

	f.applied = append(f.applied, data)

	return nil
}

// insecureClient connects the way `talosctl apply-config --insecure` does:
// TLS without verifying the server and without a client certificate.
func insecureClient(t *testing.T, addr string) *client.Client {
	t.Helper()

	c, err := client.New(context.Background(),
		client.WithEndpoints(addr),
		client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true})) //nolint:gosec // maintenance mode is insecure by design
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return c
}

func TestMaintenance(t *testing.T) {
	cfg, err := api.MaintenanceTLS([]net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	node := &fakeConfigurer{}
	stop := make(chan struct{})
	done := make(chan error, 1)

	go func() {
		done <- api.ServeMaintenance(context.Background(), lis, &api.Maintenance{Node: node, Tag: "v1.14.1", Host: "lab"}, cfg, stop)
	}()

	c := insecureClient(t, lis.Addr().String())
	ctx := context.Background()

	v, err := c.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, "v1.14.1", v.Messages[0].Version.Tag)

	// everything but Version and ApplyConfiguration is refused
	_, err = c.Upgrade(ctx, "x", false, false)
	require.Equal(t, codes.Unimplemented, status.Code(err), "%v", err)
	require.Error(t, c.Reboot(ctx))

	_, err = c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("broken")})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "no v1alpha1 document")

	_, err = c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("cfg"), Mode: machine.ApplyConfigurationRequest_STAGED})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "not supported in maintenance mode")

	r, err := c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("cfg"), DryRun: true})
	require.NoError(t, err)
	require.Contains(t, r.Messages[0].ModeDetails, "Dry run")
	require.Empty(t, node.applied)

	r, err = c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("cfg"), Mode: machine.ApplyConfigurationRequest_REBOOT}) //nolint:staticcheck
	require.NoError(t, err)
	require.Equal(t, machine.ApplyConfigurationRequest_NO_REBOOT, r.Messages[0].Mode)

	_, err = c.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("second")})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "accepts one configuration")
	require.Equal(t, [][]byte{[]byte("cfg")}, node.applied)

	close(stop)
	require.NoError(t, <-done)
}
