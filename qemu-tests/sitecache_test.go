package qemutests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sitecache/mirror"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

// TestStagedUpgradeThroughSiteCache is a lab node at a thin site: its only
// registry is the site cache (fleetctl's pull-through mirror, in front of
// the regional registry). A rollout with staging has it pull v2 through the
// cache (ImageService.Pull) before its maintenance window opens, and inside
// the window only switches (LifecycleService.Upgrade with the pulled image,
// then Reboot).
func TestStagedUpgradeThroughSiteCache(t *testing.T) {
	t.Parallel()

	g := Golden(t)
	ctx := scenario(t)

	cache, err := mirror.New(mirror.Options{Upstream: fmt.Sprintf("127.0.0.1:%d", suite.RegistryPort), Insecure: true, Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(cache.Close)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	srv := &http.Server{Handler: cache, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(lis) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })

	vmPriority(t, prioLong)
	m := g.Clone(t, "staged")
	m.Boot(ctx, BootOptions{RegistryPort: lis.Addr().(*net.TCPAddr).Port})
	require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)

	image := suite.PushInstaller(t, "v2")

	// the maintenance window opens at the first full minute at least 30 s
	// from now (UTC; windows start on whole minutes): staging starts before
	// it, and a pull still running when it opens is waited for, as the
	// engine does for a node still pulling
	opens := time.Now().UTC().Add(30 * time.Second).Truncate(time.Minute).Add(time.Minute)
	inv := &inventory.Inventory{
		Sites: []inventory.Site{{Name: "thin", Region: "lab", TimeZone: "UTC", Bandwidth: inventory.BandwidthLow, Source: "test",
			Windows: []window.Window{{Start: opens.Format("15:04"), Duration: "30m"}}}},
		Clusters: []inventory.Cluster{{Name: "thin-1", Site: "thin", Talosconfig: filepath.Join(suite.Keys, "talosconfig"), Source: "test",
			Nodes: []inventory.Node{{Name: "node", Endpoint: m.vm.APIEndpoint(), Role: inventory.RoleControlPlane}}}},
	}
	require.NoError(t, inv.Validate())

	p := &plan.Plan{
		Name: "staged-v2", Image: image, Version: suite.Images["v2"].Record.Version,
		Waves:   []plan.Wave{{Name: "all", Percent: 100}},
		Health:  plan.HealthGate{Timeout: plan.Duration(4 * time.Minute), Interval: plan.Duration(2 * time.Second)},
		Staging: plan.Staging{Enabled: true},
	}
	p.Default()
	require.NoError(t, p.Validate())

	st, err := store.Open(filepath.Join(t.TempDir(), "fleet.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	probe := &callTimes{inner: talos.NewFactory(), at: map[string]time.Time{}}

	res, err := engine.Run(ctx, engine.Options{Inventory: inv, Plan: p, Store: st, Driver: probe, DriverName: "talos", Actor: "qemu-tests"})
	require.NoError(t, err)
	require.Equal(t, 1, res.Done, "result: %+v", res)

	staged, switched := probe.get("stage"), probe.get("switch")
	require.False(t, staged.IsZero(), "the node was never staged")
	require.True(t, staged.Before(opens), "staged at %s, after the window opened at %s", staged, opens)
	require.False(t, switched.Before(opens), "switched at %s, before the window opened at %s", switched, opens)
	require.True(t, probe.get("upgrade").IsZero(), "no pull inside the window: the legacy Upgrade call was used")

	stats := cache.Stats()
	require.Positive(t, stats.BlobsFetched, "the image came through the site cache: %+v", stats)
	require.Positive(t, stats.WANBytes, "%+v", stats)

	v, err := m.Client(ctx).Version(ctx)
	require.NoError(t, err)
	require.Equal(t, "2.0.0", v.Messages[0].Version.Sha)
	t.Logf("staged %s, window %s, switched %s; cache %+v", staged.Format(time.TimeOnly), opens.Format(time.TimeOnly), switched.Format(time.TimeOnly), stats)
}

// callTimes records when each kind of call (stage, switch, upgrade) was
// first made.
type callTimes struct {
	inner driver.Factory

	mu sync.Mutex
	at map[string]time.Time
}

func (c *callTimes) mark(what string) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if _, ok := c.at[what]; !ok {
		c.at[what] = time.Now()
	}
}

func (c *callTimes) get(what string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()

	return c.at[what]
}

func (c *callTimes) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	n, err := c.inner.Open(ctx, t)
	if err != nil {
		return nil, err
	}

	return &timedNode{Node: n, st: n.(driver.Stager), c: c}, nil
}

type timedNode struct {
	driver.Node
	st driver.Stager
	c  *callTimes
}

func (n *timedNode) Upgrade(ctx context.Context, image string) error {
	n.c.mark("upgrade")

	return n.Node.Upgrade(ctx, image)
}

func (n *timedNode) Stage(ctx context.Context, image string) error {
	if err := n.st.Stage(ctx, image); err != nil {
		return err
	}

	n.c.mark("stage")

	return nil
}

func (n *timedNode) Switch(ctx context.Context, image string) error {
	n.c.mark("switch")

	return n.st.Switch(ctx, image)
}
