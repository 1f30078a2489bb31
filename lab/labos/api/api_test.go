package api_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/lab/labos/api"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

type fakeNode struct {
	mu       sync.Mutex
	upgraded []string
	rollback int
	reboots  []bool
}

func (n *fakeNode) Status() nodeapi.Status {
	return nodeapi.Status{Version: "1.0.0", Checks: []nodeapi.Check{
		{Name: nodeapi.ServiceTPMUnlock, Healthy: true, Message: "unsealed"},
		{Name: nodeapi.ServiceEBPF, Healthy: false, Message: "missing: map/RingBuf"},
	}}
}

func (n *fakeNode) Upgrade(_ context.Context, image string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.upgraded = append(n.upgraded, image)

	return "installed lab-1.1.0+3.efi, rebooting", nil
}

func (n *fakeNode) Rollback(context.Context) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.rollback++

	return "lab-1.0.0.efi", nil
}

func (n *fakeNode) Reboot(_ context.Context, off bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reboots = append(n.reboots, off)

	return nil
}

type env struct {
	addr   string
	bundle *secrets.Bundle
	node   *fakeNode
}

func start(t *testing.T) *env {
	t.Helper()

	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	require.NoError(t, err)

	tlsCfg, err := api.TLSConfig(bundle.Certs.OS.Crt, bundle.Certs.OS.Key, []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
	require.NoError(t, err)

	statusFile := filepath.Join(t.TempDir(), "status.json")
	require.NoError(t, os.WriteFile(statusFile, []byte(`{"version":"1.0.0","healthy":true}`), 0o644))

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	node := &fakeNode{}
	srv := &api.Server{Node: node, Tag: "1.0.0", Host: "lab", StatusFile: statusFile}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() { done <- api.Serve(ctx, lis, srv, tlsCfg) }()

	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	return &env{addr: lis.Addr().String(), bundle: bundle, node: node}
}

func (e *env) client(t *testing.T, bundle *secrets.Bundle, roles ...role.Role) *client.Client {
	t.Helper()

	crt, err := bundle.GenerateTalosAPIClientCertificate(role.MakeSet(roles...))
	require.NoError(t, err)

	cfg := clientconfig.NewConfig("lab", []string{e.addr}, bundle.Certs.OS.Crt, crt)

	c, err := client.New(context.Background(), client.WithConfig(cfg))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return c
}

func TestMachineAPI(t *testing.T) {
	e := start(t)
	c := e.client(t, e.bundle, role.Admin)
	ctx := context.Background()

	v, err := c.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, "1.0.0", v.Messages[0].Version.Tag)
	require.Equal(t, "labos", v.Messages[0].Platform.Name)

	up, err := c.Upgrade(ctx, "10.0.2.100:5000/lab/installer:1.1.0", false, false)
	require.NoError(t, err)
	require.Contains(t, up.Messages[0].Ack, "lab-1.1.0+3.efi")
	require.Equal(t, []string{"10.0.2.100:5000/lab/installer:1.1.0"}, e.node.upgraded)

	require.NoError(t, c.Rollback(ctx))
	require.Equal(t, 1, e.node.rollback)

	require.NoError(t, c.Reboot(ctx))
	require.Equal(t, []bool{false}, e.node.reboots)

	sl, err := c.ServiceList(ctx)
	require.NoError(t, err)
	svcs := sl.Messages[0].Services
	require.Len(t, svcs, 2)
	require.Equal(t, nodeapi.ServiceTPMUnlock, svcs[0].Id)
	require.True(t, svcs[0].Health.Healthy)
	require.False(t, svcs[1].Health.Healthy)
	require.Equal(t, "Failed", svcs[1].State)

	rc, err := c.Read(ctx, nodeapi.StatusPath)
	require.NoError(t, err)
	b, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	st, err := nodeapi.ParseStatus(string(b))
	require.NoError(t, err)
	require.True(t, st.Healthy)

	rc, err = c.Read(ctx, "/etc/shadow")
	if err == nil {
		_, err = io.ReadAll(rc)
	}
	require.ErrorContains(t, err, "only /run/labos/status.json")
}

func TestAuthorization(t *testing.T) {
	e := start(t)
	ctx := context.Background()

	reader := e.client(t, e.bundle, role.Reader)

	_, err := reader.Version(ctx)
	require.NoError(t, err)

	_, err = reader.Upgrade(ctx, "x", false, false)
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.Empty(t, e.node.upgraded)

	// as on Talos, reading files is for admins only
	rc, err := reader.Read(ctx, nodeapi.StatusPath)
	if err == nil {
		_, err = io.ReadAll(rc)
	}
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "lacks role")

	// a running node is never reconfigured, not even by an admin
	admin := e.client(t, e.bundle, role.Admin)
	_, err = admin.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("version: v1alpha1\n")})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "accepts one configuration")

	other, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	require.NoError(t, err)

	// a client whose certificate comes from another CA (and trusts it) is refused
	stranger := e.client(t, other, role.Admin)
	_, err = stranger.Version(ctx)
	require.Error(t, err)
}
