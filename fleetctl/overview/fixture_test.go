package overview

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

const (
	opToken = "operator-token-4f1c"
	roToken = "readonly-token-9a2e"
)

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))

	return hex.EncodeToString(sum[:])
}

func testConfig() *Config {
	return &Config{Users: []User{
		{Name: "alice", Role: RoleOperator, TokenSHA256: sha(opToken)},
		{Name: "bob", Role: RoleReadOnly, TokenSHA256: sha(roToken)},
	}}
}

type fixture struct {
	st  *store.Store
	id  string
	inv *inventory.Inventory
	srv *Server
	ts  *httptest.Server
	dir string
}

// newFixture writes a rollout over a small SIMULATED fleet and records a
// few node outcomes as the engine would.
func newFixture(t *testing.T, spec sim.Spec, opts func(*Options)) *fixture {
	t.Helper()

	dir := t.TempDir()
	f := sim.Inventory(spec)

	for i := range f.Clusters {
		tc := filepath.Join(dir, "creds", f.Clusters[i].Name, "talosconfig")
		require.NoError(t, os.MkdirAll(filepath.Dir(tc), 0o700))
		require.NoError(t, os.WriteFile(tc, []byte("context: x\n"), 0o600))
		f.Clusters[i].Talosconfig = tc
	}

	inv := &inventory.Inventory{Sites: f.Sites, Clusters: f.Clusters}
	require.NoError(t, inv.Validate())

	p := &plan.Plan{
		Name: "test", Image: sim.Image("v2.0.0"), Version: "v2.0.0",
		Waves:  []plan.Wave{{Name: "canary", Count: 1}, {Name: "all", Percent: 100, MaxFailures: 5}},
		Health: plan.HealthGate{Timeout: plan.Duration(time.Second)},
		Budget: plan.Budget{MaxFailures: 10},
	}
	p.Default()
	require.NoError(t, p.Validate())

	st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	id, err := engine.Create(t.Context(), engine.Options{Inventory: inv, Plan: p, Store: st, DriverName: "sim:" + dir, Actor: "engine@test"})
	require.NoError(t, err)

	o := Options{Store: st, Config: testConfig(), Poll: 50 * time.Millisecond}
	if opts != nil {
		opts(&o)
	}

	srv, err := New(o)
	require.NoError(t, err)
	t.Cleanup(srv.Close)

	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)

	return &fixture{st: st, id: id, inv: inv, srv: srv, ts: ts, dir: dir}
}

// record writes a node transition as the engine does (node id = index in inventory order).
func (f *fixture) record(t *testing.T, node int, subject string, tr store.Transition) {
	t.Helper()

	tr.Node, tr.Subject = node, subject
	require.NoError(t, f.st.RecordNode(context.Background(), f.id, "engine@test", tr))
}

func (f *fixture) do(t *testing.T, method, path, token string, body io.Reader) (*http.Response, []byte) {
	t.Helper()

	req, err := http.NewRequest(method, f.ts.URL+path, body)
	require.NoError(t, err)

	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}

	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)

	defer resp.Body.Close()

	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)

	return resp, b
}

func (f *fixture) getJSON(t *testing.T, path, token string, v any) {
	t.Helper()

	resp, b := f.do(t, http.MethodGet, path, token, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", path, b)
	require.NoError(t, json.Unmarshal(b, v), "GET %s", path)
}

func errorText(t *testing.T, b []byte) string {
	t.Helper()

	var e apiError
	require.NoError(t, json.Unmarshal(b, &e), "body %s", b)

	return e.Error
}

// smallFleet: 4 clusters x 2 nodes in 2 sites; site-0000 always open, site-0001 with a window.
func smallFleet(windowed bool) sim.Spec {
	s := sim.Spec{Clusters: 4, NodesPerCluster: 2, ClustersPerSite: 2, Regions: 2}
	if windowed {
		s.Windows = []window.Window{{Start: "02:00", Duration: "1h"}}
	}

	return s
}

func has(body []byte, s string) bool { return strings.Contains(string(body), s) }
