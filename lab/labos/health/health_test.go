package health_test

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/health"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

func TestEvaluate(t *testing.T) {
	ok := nodeapi.Check{Name: "a", Healthy: true}
	bad := nodeapi.Check{Name: "b", Message: "x"}

	cases := []struct {
		name    string
		checks  []nodeapi.Check
		inject  string
		healthy bool
		reason  string
		n       int
	}{
		{name: "all good", checks: []nodeapi.Check{ok}, healthy: true, n: 1},
		{name: "one bad", checks: []nodeapi.Check{ok, bad}, reason: "failed: b", n: 2},
		{name: "injected", checks: []nodeapi.Check{ok}, inject: health.InjectHealthFail, reason: "failed: injected", n: 2},
		{name: "unknown injection ignored", checks: []nodeapi.Check{ok}, inject: "other", healthy: true, n: 1},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checks, healthy, reason := health.Evaluate(tc.checks, tc.inject)
			require.Equal(t, tc.healthy, healthy)
			require.Equal(t, tc.reason, reason)
			require.Len(t, checks, tc.n)
		})
	}
}

func TestRunProbes(t *testing.T) {
	c := health.RunProbes("ebpf", []health.Probe{
		{Name: "ok", Run: func() error { return nil }},
		{Name: "old", Run: func() error { return fmt.Errorf("probe: %w", ebpf.ErrNotSupported) }},
		{Name: "perm", Run: func() error { return errors.New("operation not permitted") }},
	})
	require.False(t, c.Healthy)
	require.Equal(t, "missing: old, perm (operation not permitted)", c.Message)

	c = health.RunProbes("ebpf", []health.Probe{{Name: "ok", Run: func() error { return nil }}})
	require.True(t, c.Healthy)
}

func TestAddons(t *testing.T) {
	got := []nodeapi.Addon{{Name: "cilium"}, {Name: "metallb"}}

	require.True(t, health.Addons(got, nil).Healthy)
	require.True(t, health.Addons(got, []string{"cilium"}).Healthy)
	require.False(t, health.Addons(got, []string{"thanos"}).Healthy)
	require.False(t, health.Addons(nil, nil).Healthy)
}

// TestCiliumProbesHere runs the real probes against this machine's kernel
// when it allows BPF (the guest always does: labos runs as root in it).
func TestCiliumProbesHere(t *testing.T) {
	if err := features.HaveProgramType(ebpf.SocketFilter); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("BPF is not usable here (%v); CI must run as root with bpf() allowed", err)
		}

		t.Skipf("BPF not usable here: %v", err)
	}

	c := health.RunProbes(nodeapi.ServiceEBPF, health.CiliumProbes())
	t.Log(c.Message)
	require.True(t, c.Healthy, c.Message)
}
