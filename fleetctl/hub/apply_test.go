package hub_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
)

// fakeMaintenance is a node's machine API in maintenance mode: it takes a
// configuration over TLS with a self-signed certificate.
type fakeMaintenance struct {
	machineapi.UnimplementedMachineServiceServer

	mu      sync.Mutex
	applied [][]byte
}

func (f *fakeMaintenance) ApplyConfiguration(_ context.Context, req *machineapi.ApplyConfigurationRequest) (*machineapi.ApplyConfigurationResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	f.applied = append(f.applied, req.GetData())

	return &machineapi.ApplyConfigurationResponse{}, nil
}

func (f *fakeMaintenance) got() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()

	return append([][]byte(nil), f.applied...)
}

func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "maintenance"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)

	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func serveMaintenance(t testing.TB, p *simpeer.Peer) *fakeMaintenance {
	t.Helper()

	l, err := p.Listen(50000)
	require.NoError(t, err)

	f := &fakeMaintenance{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})))
	machineapi.RegisterMachineServiceServer(srv, f)

	go srv.Serve(l) //nolint:errcheck
	t.Cleanup(srv.Stop)

	return f
}

// A join token only lets a machine be seen: the configuration goes (through
// the tunnel, with machinery's client, to the maintenance-mode API) only to
// machines the inventory lists by UUID or an operator accepted; the others
// are named in the log with the reason.
func TestConfigOnlyToAdmittedMachines(t *testing.T) {
	invPath := filepath.Join(t.TempDir(), "machines.yaml")
	require.NoError(t, os.WriteFile(invPath, []byte("machines:\n- {uuid: uuid-inv, cluster: c1, role: worker}\n"), 0o600))

	e := newEnv(t, func(c *hub.Config) { c.Inventory = invPath })
	require.NoError(t, os.MkdirAll(filepath.Join(e.cfg.ConfigDir, "c1"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(e.cfg.ConfigDir, "c1", "worker.yaml"), []byte("machine: {type: worker}\n"), 0o600))

	ctx := context.Background()
	tok := e.token("berlin")

	peers := map[string]*fakeMaintenance{}

	for _, uuid := range []string{"uuid-inv", "uuid-acc", "uuid-stranger", "uuid-rej"} {
		p := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: uuid, UniqueToken: uuid, Tunnel: uuid != "uuid-acc"})
		peers[uuid] = serveMaintenance(t, p)
		e.linkUp(ctx, p)
	}

	_, err := e.reg.Decide(ctx, "uuid-rej", registry.StateRejected, "", "", "op@test")
	require.NoError(t, err)

	eventually(t, 20*time.Second, "inventory machine configured", func() bool { return len(peers["uuid-inv"].got()) == 1 })
	assert.Equal(t, "machine: {type: worker}\n", string(peers["uuid-inv"].got()[0]))
	e.waitLog(`msg="configuration applied" machine=uuid-inv cluster=c1 role=worker admitted_by=inventory`, 5*time.Second)

	e.waitLog(`msg="configuration withheld" machine=uuid-stranger reason="machine uuid-stranger (site berlin): configuration withheld: its UUID is not in the inventory and no operator accepted it`, 5*time.Second)
	e.waitLog(`msg="configuration withheld" machine=uuid-rej reason="machine uuid-rej: configuration withheld: rejected by op@test"`, 5*time.Second)
	e.waitLog(`msg="link dropped" machine=uuid-rej reason="rejected by op@test"`, 5*time.Second)

	_, err = e.reg.Decide(ctx, "uuid-acc", registry.StateAccepted, "c1", "worker", "op@test")
	require.NoError(t, err)
	eventually(t, 20*time.Second, "accepted machine configured", func() bool { return len(peers["uuid-acc"].got()) == 1 })

	eventually(t, 5*time.Second, "the apply recorded", func() bool {
		m, err := e.reg.Machine(ctx, "uuid-acc")

		return err == nil && !m.ConfigApplied.IsZero()
	})

	time.Sleep(time.Second) // a few more reconcile rounds
	assert.Empty(t, peers["uuid-stranger"].got(), "a machine neither listed nor accepted never gets a configuration")
	assert.Empty(t, peers["uuid-rej"].got(), "a rejected machine never gets a configuration")
	assert.Len(t, peers["uuid-inv"].got(), 1, "a configuration is applied once")
}

func TestAdmit(t *testing.T) {
	inv := hub.Inventory{"listed": {UUID: "listed", Cluster: "c1", Role: "worker"}}

	for _, tc := range []struct {
		name    string
		m       registry.Machine
		want    hub.Admission
		wantErr string
	}{
		{"listed", registry.Machine{UUID: "listed", State: registry.StatePending}, hub.Admission{Cluster: "c1", Role: "worker", By: "inventory"}, ""},
		{"accepted", registry.Machine{UUID: "x", State: registry.StateAccepted, Cluster: "c2", Role: "controlplane"}, hub.Admission{Cluster: "c2", Role: "controlplane", By: "operator"}, ""},
		{"stranger", registry.Machine{UUID: "x", Site: "s", State: registry.StatePending}, hub.Admission{}, "its UUID is not in the inventory and no operator accepted it"},
		{"rejected even if listed", registry.Machine{UUID: "listed", State: registry.StateRejected, DecidedBy: "op"}, hub.Admission{}, "rejected by op"},
		{"disagreement", registry.Machine{UUID: "listed", State: registry.StateAccepted, Cluster: "c9", Role: "worker", DecidedBy: "op"}, hub.Admission{}, "the inventory lists it as c1/worker but op accepted it as c9/worker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hub.Admit(tc.m, inv)
			if tc.wantErr != "" {
				require.ErrorIs(t, err, hub.ErrWithheld)
				assert.ErrorContains(t, err, tc.wantErr)

				return
			}

			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestLoadInventoryErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "machines.yaml")
	require.NoError(t, os.WriteFile(path, []byte("machines:\n- {uuid: a, cluster: c, role: boss}\n- {uuid: b, cluster: c, role: worker}\n- {uuid: b, cluster: c, role: worker}\n"), 0o600))

	_, err := hub.LoadInventory(path)
	require.Error(t, err)
	assert.ErrorContains(t, err, path+`: machines[0] (a): role: "boss" is not controlplane or worker`)
	assert.ErrorContains(t, err, path+": machines[2]: uuid: b is listed twice")
}
