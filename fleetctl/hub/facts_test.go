package hub_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// The overview's node facts come from what a machine reported through its
// link, and only for the cluster it was accepted into.
func TestFactsFromRegistry(t *testing.T) {
	ctx := context.Background()

	st, err := store.Open(filepath.Join(t.TempDir(), "fleet.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() }) //nolint:errcheck

	reg := registry.New(st.DB())
	addr := netip.MustParseAddr("fd00::10")

	_, err = reg.Enroll(ctx, registry.Enrollment{
		UUID: "4c4c4544-0000-1000-8000-000000000001", Site: "berlin", TokenID: "jt-1", UniqueToken: "u1",
		PublicKey: "key-1", TalosVersion: "v1.14.1", Transport: registry.TransportGRPC,
	}, func() (netip.Addr, error) { return addr, nil })
	require.NoError(t, err)

	uuid := "4c4c4544-0000-1000-8000-000000000001"
	require.NoError(t, reg.SetReport(ctx, uuid, registry.Report{ImageVersion: "1.2.0", SecureBoot: "enabled", DiskEncryption: "tpm"}))

	f := &hub.Facts{Registry: reg, TTL: time.Nanosecond}

	_, ok := f.Facts("berlin-1", uuid)
	assert.False(t, ok, "a machine nobody accepted belongs to no cluster")

	_, err = reg.Decide(ctx, uuid, registry.StateAccepted, "berlin-1", "worker", "op")
	require.NoError(t, err)
	require.NoError(t, reg.AddEvents(ctx, []registry.Event{{UUID: uuid, At: time.Now(), Type: "MachineStatusEvent", Payload: `{"stage":"RUNNING"}`}}))
	require.NoError(t, reg.AddLogs(ctx, []registry.LogLine{{UUID: uuid, At: time.Now(), Line: `{"msg":"tpm: unsealed"}`}}))

	for _, node := range []string{uuid, addr.String()} {
		got, ok := f.Facts("berlin-1", node)
		require.True(t, ok, "node named %s", node)
		assert.Equal(t, "1.2.0", got.Version)
		assert.Equal(t, "on", got.SecureBoot)
		assert.Equal(t, "on", got.Encryption)
		require.Len(t, got.Events, 1)
		assert.Contains(t, got.Events[0], "MachineStatusEvent")
		assert.Equal(t, []string{`{"msg":"tpm: unsealed"}`}, got.KernelLog)
	}

	_, ok = f.Facts("other-cluster", uuid)
	assert.False(t, ok, "facts answer only for the machine's own cluster")
}
