package registry_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/store"
)

func open(t testing.TB) *registry.Registry {
	t.Helper()

	st, err := store.Open(filepath.Join(t.TempDir(), "fleet.db"), store.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	return registry.New(st.DB())
}

func seqAlloc() func() (netip.Addr, error) {
	var (
		mu sync.Mutex
		a  = netip.MustParseAddr("fd00::100")
	)

	return func() (netip.Addr, error) {
		mu.Lock()
		defer mu.Unlock()

		a = a.Next()

		return a, nil
	}
}

func enroll(uuid, uniq, key string) registry.Enrollment {
	return registry.Enrollment{UUID: uuid, Site: "berlin", TokenID: "jt-x", UniqueToken: uniq, PublicKey: key, TalosVersion: "v1.14.1", Transport: registry.TransportUDP}
}

func TestTokensCreateCheckRevokeRotate(t *testing.T) {
	ctx := context.Background()
	r := open(t)

	secret, tok, err := r.CreateToken(ctx, "berlin", "op@host")
	require.NoError(t, err)
	assert.Contains(t, secret, "lfj_")

	got, err := r.CheckToken(ctx, secret)
	require.NoError(t, err)
	assert.Equal(t, tok.ID, got.ID)
	assert.Equal(t, "berlin", got.Site)

	_, err = r.CheckToken(ctx, "lfj_nope")
	require.ErrorIs(t, err, registry.ErrTokenUnknown)

	_, err = r.CheckToken(ctx, "")
	require.ErrorContains(t, err, "sent no join token")

	newSecret, newTok, revoked, err := r.RotateToken(ctx, "berlin", "op@host")
	require.NoError(t, err)
	assert.Equal(t, []string{tok.ID}, revoked)

	_, err = r.CheckToken(ctx, secret)
	require.ErrorIs(t, err, registry.ErrTokenRevoked)
	assert.ErrorContains(t, err, "token "+tok.ID+" of site berlin (rotated to "+newTok.ID+")")

	_, err = r.CheckToken(ctx, newSecret)
	require.NoError(t, err)

	require.NoError(t, r.RevokeToken(ctx, newTok.ID, "laptop stolen"))
	_, err = r.CheckToken(ctx, newSecret)
	assert.ErrorContains(t, err, "laptop stolen")

	assert.ErrorIs(t, r.RevokeToken(ctx, "jt-missing", ""), registry.ErrNotFound)

	toks, err := r.Tokens(ctx)
	require.NoError(t, err)
	require.Len(t, toks, 2)

	// The database holds only hashes: no secret appears in it.
	var n int
	require.NoError(t, r.DBForTest().QueryRow(`SELECT count(*) FROM hub_tokens WHERE hash = ? OR hash = ?`, secret, newSecret).Scan(&n))
	assert.Zero(t, n)
}

func TestEnrollKeepsAddressAcrossReboots(t *testing.T) {
	ctx := context.Background()
	r := open(t)
	alloc := seqAlloc()

	first, err := r.Enroll(ctx, enroll("u1", "tok1", "key1"), alloc)
	require.NoError(t, err)
	assert.True(t, first.New)
	assert.Equal(t, registry.StatePending, first.Machine.State)

	// Talos makes a new WireGuard key every boot; the same unique token says
	// it is the same machine: same address, old key reported for removal.
	again, err := r.Enroll(ctx, enroll("u1", "tok1", "key2"), alloc)
	require.NoError(t, err)
	assert.False(t, again.New)
	assert.Equal(t, first.Machine.TunnelAddress, again.Machine.TunnelAddress)
	assert.Equal(t, "key1", again.PreviousPublicKey)
	assert.Equal(t, "key2", again.Machine.PublicKey)
}

func TestEnrollDuplicateUUIDLosesNothing(t *testing.T) {
	ctx := context.Background()
	r := open(t)
	alloc := seqAlloc()

	orig, err := r.Enroll(ctx, enroll("u1", "tok1", "key1"), alloc)
	require.NoError(t, err)
	_, err = r.Enroll(ctx, enroll("u2", "tok2", "key2"), alloc)
	require.NoError(t, err)

	_, err = r.Enroll(ctx, enroll("u1", "other-machine", "key3"), alloc)
	require.ErrorIs(t, err, registry.ErrDuplicateUUID)
	assert.ErrorContains(t, err, "machine u1: duplicate machine UUID: already enrolled from site berlin")

	m, err := r.Machine(ctx, "u1")
	require.NoError(t, err)
	assert.Equal(t, "key1", m.PublicKey, "the enrolled machine keeps its key")
	assert.Equal(t, orig.Machine.TunnelAddress, m.TunnelAddress)

	all, err := r.Machines(ctx)
	require.NoError(t, err)
	assert.Len(t, all, 2)
}

func TestRejectedMachineMayNotEnroll(t *testing.T) {
	ctx := context.Background()
	r := open(t)

	_, err := r.Enroll(ctx, enroll("u1", "t", "k"), seqAlloc())
	require.NoError(t, err)
	_, err = r.Decide(ctx, "u1", registry.StateRejected, "", "", "op")
	require.NoError(t, err)

	_, err = r.Enroll(ctx, enroll("u1", "t", "k2"), seqAlloc())
	require.ErrorIs(t, err, registry.ErrRejected)
	assert.ErrorContains(t, err, "machine u1: machine rejected by an operator (by op)")
}

func TestDecideNeedsClusterAndRole(t *testing.T) {
	ctx := context.Background()
	r := open(t)

	_, err := r.Decide(ctx, "nope", registry.StateAccepted, "c", "worker", "op")
	require.ErrorIs(t, err, registry.ErrNotFound)

	_, err = r.Enroll(ctx, enroll("u1", "t", "k"), seqAlloc())
	require.NoError(t, err)

	_, err = r.Decide(ctx, "u1", registry.StateAccepted, "", "worker", "op")
	require.ErrorContains(t, err, "--cluster and --role are required")

	m, err := r.Decide(ctx, "u1", registry.StateAccepted, "c1", "worker", "op")
	require.NoError(t, err)
	assert.Equal(t, "c1", m.Cluster)
	assert.Equal(t, registry.StateAccepted, m.State)
}

// Many machines enrolling at once (the hub after an outage) must all be
// recorded, each with its own address.
func TestConcurrentEnrollmentsAllRecorded(t *testing.T) {
	ctx := context.Background()
	r := open(t)
	alloc := seqAlloc()

	var wg sync.WaitGroup

	errs := make(chan error, 50)

	for i := range 50 {
		wg.Go(func() {
			_, err := r.Enroll(ctx, enroll(fmt.Sprintf("u%02d", i), fmt.Sprint(i), fmt.Sprint("k", i)), alloc)
			errs <- err
		})
	}

	wg.Wait()
	close(errs)

	for err := range errs {
		require.NoError(t, err)
	}

	all, err := r.Machines(ctx)
	require.NoError(t, err)
	assert.Len(t, all, 50)

	seen := map[string]bool{}
	for _, m := range all {
		assert.False(t, seen[m.TunnelAddress], "address %s given twice", m.TunnelAddress)
		seen[m.TunnelAddress] = true
	}
}

func TestEventsAndLogsPrunedPerMachine(t *testing.T) {
	ctx := context.Background()
	r := open(t)

	_, err := r.Enroll(ctx, enroll("u1", "t", "k"), seqAlloc())
	require.NoError(t, err)

	var lines []registry.LogLine
	for i := range registry.MaxLogsPerMachine + 10 {
		lines = append(lines, registry.LogLine{UUID: "u1", At: time.Now(), Line: fmt.Sprintf(`{"n":%d}`, i)})
	}

	lines = append(lines, registry.LogLine{UUID: "u2", At: time.Now(), Line: `{"other":1}`})
	require.NoError(t, r.AddLogs(ctx, lines))

	got, err := r.Logs(ctx, "u1", 0, 0)
	require.NoError(t, err)
	require.Len(t, got, registry.MaxLogsPerMachine)
	assert.Equal(t, `{"n":10}`, got[0].Line)

	other, err := r.Logs(ctx, "u2", 0, 0)
	require.NoError(t, err)
	assert.Len(t, other, 1, "pruning one machine never touches another's")

	tail, err := r.Logs(ctx, "u1", 0, 3)
	require.NoError(t, err)
	require.Len(t, tail, 3)

	after, err := r.Logs(ctx, "u1", tail[1].ID, 0)
	require.NoError(t, err)
	require.Len(t, after, 1)

	require.NoError(t, r.AddEvents(ctx, []registry.Event{{UUID: "u1", At: time.Now(), Type: "machine.PhaseEvent", Payload: "{}"}}))
	evs, err := r.Events(ctx, "u1", 0)
	require.NoError(t, err)
	require.Len(t, evs, 1)
	assert.Equal(t, "machine.PhaseEvent", evs[0].Type)
}

func TestHubKeyStable(t *testing.T) {
	ctx := context.Background()
	r := open(t)

	n := 0
	gen := func() (string, error) { n++; return fmt.Sprint("key", n), nil }

	k1, err := r.HubKey(ctx, gen)
	require.NoError(t, err)
	k2, err := r.HubKey(ctx, gen)
	require.NoError(t, err)
	assert.Equal(t, k1, k2)
	assert.Equal(t, 1, n)
}

func TestEnrollRefusesAnotherMachinesKey(t *testing.T) {
	ctx := context.Background()
	r := open(t)

	_, err := r.Enroll(ctx, enroll("u1", "t1", "key1"), seqAlloc())
	require.NoError(t, err)

	_, err = r.Enroll(ctx, enroll("u2", "t2", "key1"), seqAlloc())
	require.ErrorIs(t, err, registry.ErrKeyInUse)
	assert.ErrorContains(t, err, "machine u2: WireGuard public key already in use by machine u1")

	_, err = r.Machine(ctx, "u2")
	require.ErrorIs(t, err, registry.ErrNotFound)
}

func TestNodeEndpoint(t *testing.T) {
	ctx := context.Background()
	r := open(t)

	enr, err := r.Enroll(ctx, enroll("u1", "t", "k"), seqAlloc())
	require.NoError(t, err)

	ep, err := r.NodeEndpoint(ctx, "u1", 50000)
	require.NoError(t, err)
	assert.Equal(t, "["+enr.Machine.TunnelAddress+"]:50000", ep)

	_, err = r.NodeEndpoint(ctx, "nope", 50000)
	require.ErrorContains(t, err, "machine nope: not found")

	_, err = r.Decide(ctx, "u1", registry.StateRejected, "", "", "op")
	require.NoError(t, err)

	_, err = r.NodeEndpoint(ctx, "u1", 50000)
	require.ErrorIs(t, err, registry.ErrRejected)
}
