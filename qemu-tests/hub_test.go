package qemutests

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/driver/talos"
	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/registry"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/images/bake"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/spec"
	"github.com/labfleet/labfleet/lab/harness"
	"github.com/labfleet/labfleet/lab/labos/node"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

const (
	hubUUIDA = "5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c01" // in the hub's inventory
	hubUUIDB = "5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c02" // accepted by an operator later
	hubUUIDC = "5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c03" // its image carries a revoked token

	// hubMirrored is the registry the plan names: it never resolves, so a
	// node can only get the image through the mirror its config names.
	hubMirrored = "registry.labfleet.invalid"
)

// TestHubNoInboundPort is a site behind a hospital firewall. Its VMs have
// no inbound forward at all (no hostfwd); their only outward path is one
// TCP forward to the fleet hub (restrict=on), which runs as its own
// process (`fleetctl hub`). Their image carries the SideroLink kernel
// arguments (gRPC tunnel, the site's join token).
//
//   - A is listed in the hub's inventory by UUID: it enrolls, gets its
//     config through the tunnel in maintenance mode, seals STATE, is healthy.
//   - B is not listed: the hub says why and withholds its config until an
//     operator runs `fleetctl machines accept`.
//   - C's token was revoked: the hub refuses it and says why; it never gets
//     a config.
//   - The hub restarts (SIGTERM): A and B reconnect by themselves.
//   - A two-wave rollout (inventory nodes named by machine UUID) upgrades A
//     through the tunnel, pulling through a registry mirror on the hub's
//     tunnel address; the hub and the rollout are killed with SIGKILL once
//     A is upgraded; after the hub restarts, `rollout resume` finishes B.
//     No node is upgraded twice.
func TestHubNoInboundPort(t *testing.T) {
	t.Parallel()

	// The machines start from the golden machine's firmware variables (our
	// keys enrolled; enrollment from Setup Mode is the golden scenario's
	// subject) with a new disk and TPM each: one firmware pass and reset
	// fewer per machine.
	g := Golden(t)

	sctx := scenario(t)

	ctx, cancel := context.WithTimeout(context.WithoutCancel(sctx), 35*time.Minute)
	defer cancel()

	dir := machineDir("hub")
	db := filepath.Join(dir, "fleet.db")
	require.NoError(t, os.MkdirAll(dir, 0o755))

	// join tokens: one for the site, one revoked with the CLI
	st, err := store.Open(db, store.Options{})
	require.NoError(t, err)

	reg := registry.New(st.DB())
	token, _, err := reg.CreateToken(ctx, "st-marien", "qemu-test")
	require.NoError(t, err)
	revoked, revokedTok, err := reg.CreateToken(ctx, "st-marien", "qemu-test")
	require.NoError(t, err)
	require.NoError(t, st.Close())

	out, err := fleetctl(ctx, t, db, "hub", "token", "revoke", revokedTok.ID, "--reason", "box reported stolen")
	require.NoError(t, err, out)

	// hub config: prefix, ports, inventory by UUID, cluster configs
	cfg := hub.Defaults()
	cfg.Interface = fmt.Sprintf("lfqh%d", os.Getpid()%100000)
	cfg.Prefix = fmt.Sprintf("fdae:%04x:%04x::/64", os.Getpid()&0xffff, time.Now().UnixNano()&0xffff)
	cfg.APIListen = "127.0.0.1:" + freeTCPPort(t)
	cfg.WireGuardListen = "127.0.0.1:0"
	cfg.ConfigDir = filepath.Join(dir, "configs")
	cfg.Inventory = filepath.Join(dir, "machines.yaml")
	require.NoError(t, cfg.Validate())

	serverAddr := netip.MustParsePrefix(cfg.Prefix).Addr().Next()
	mirror := net.JoinHostPort(serverAddr.String(), freeTCPPort(t))

	writeYAML(t, cfg.Inventory, map[string]any{"machines": []hub.InventoryEntry{{UUID: hubUUIDA, Cluster: "lab", Role: "controlplane"}}})
	require.NoError(t, os.MkdirAll(filepath.Join(cfg.ConfigDir, "lab"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(cfg.ConfigDir, "lab", "controlplane.yaml"), append(append([]byte{}, suite.NodeConfig...),
		[]byte("\n---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: "+hubMirrored+"\nendpoints:\n  - url: http://"+mirror+"\nskipFallback: true\n")...), 0o600))

	hubCfg := filepath.Join(dir, "hub.yaml")
	writeYAML(t, hubCfg, cfg)

	hp := &hubProcess{t: t, db: db, cfg: hubCfg, logPath: filepath.Join(dir, "hub.log")}
	hp.start(ctx)
	t.Cleanup(hp.stop)

	registryProxy(t, mirror, fmt.Sprintf("127.0.0.1:%d", suite.RegistryPort))

	// images: v1 with the site's token, v1 with the revoked token, v2 installer
	baker := bake.New(suite.Root)
	defer baker.Close()

	image := func(name, version, tok string, outputs ...string) *build.Result {
		def, err := spec.Load(filepath.Join(suite.Root, "images", "lab.yaml"))
		require.NoError(t, err)

		def.Version = version
		def.Base.Layout = filepath.Join(suite.Work, "labbase", "oci")
		def.Installer.Base.Layout = filepath.Join(suite.Work, "labbase", "installer-base")
		def.Outputs = outputs
		def.SideroLink = &spec.SideroLink{API: "grpc://" + harness.GuestHubAddr, JoinToken: tok, Tunnel: true,
			HubAddress: serverAddr.String(), EventsPort: cfg.EventSinkPort, LogsPort: cfg.LogReceiverPort}
		def.Defaults()
		require.NoError(t, def.Validate("lab.yaml"))

		res, err := build.Build(ctx, def, build.Options{
			Root: suite.Root, OutDir: filepath.Join(dir, "image-"+name), KeysDir: suite.Keys, Baker: baker,
			ToolsPath: filepath.Join(suite.Root, "_cache", "lab-assets", "tools", "bin"),
		})
		require.NoError(t, err)

		return res
	}

	v1 := image("v1", "1.0.0", token, spec.OutputUKI, spec.OutputDisk)
	v1revoked := image("v1-revoked", "1.0.0", revoked, spec.OutputUKI, spec.OutputDisk)

	boot := func(name, uuid string, img *build.Result) *Machine {
		d := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Join(d, "tpm"), 0o755))

		m := &Machine{t: t, Name: "hub-" + name, Dir: d, Disk: filepath.Join(d, "disk.raw"), Vars: filepath.Join(d, "vars.fd"), TPM: filepath.Join(d, "tpm")}
		sparseCopy(t, filepath.Join(img.Dir, "disk.raw"), m.Disk)
		sparseCopy(t, g.Vars, m.Vars)

		vm, err := harness.Start(ctx, harness.Spec{
			Name: m.Name, Disk: m.Disk, DiskInPlace: true, Vars: m.Vars, VarsInPlace: true,
			TPM: true, TPMStateDir: m.TPM, NoInbound: true, HubPort: portOf(t, cfg.APIListen), UUID: uuid,
			WorkDir: filepath.Join(d, "run"), WaitTimeout: 6 * time.Minute,
		})
		require.NoError(t, err)
		m.vm = vm
		t.Cleanup(m.PowerOff)
		t.Logf("%s booting (console: %s, hub log: %s)", m.Name, vm.ConsolePath(), hp.logPath)

		require.Empty(t, vm.APIEndpoint(), "nothing is forwarded into the VM")
		qemuArgs, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", vm.PID()))
		require.NoError(t, err)
		require.NotContains(t, string(qemuArgs), "hostfwd", "no inbound forward at all")
		require.Contains(t, string(qemuArgs), "restrict=on,guestfwd=tcp:"+harness.GuestHubAddr, "the one outward path is the hub's")

		return m
	}

	// A test holds at most two VMs (the harness's two slots): B and C
	// first, then A beside B.
	reserveVMs(ctx, t, 2)

	b := boot("b", hubUUIDB, v1)
	c := boot("c", hubUUIDC, v1revoked)

	// B: seen, not configured, and the hub says why
	hp.waitLog(ctx, "why B's config is withheld", "configuration withheld", hubUUIDB, "not in the inventory and no operator accepted it")

	// C: refused at enrollment, and the hub says why
	hp.waitLog(ctx, "why C is refused", "enrollment refused", hubUUIDC, "join token refused", "revoked")

	rst, err := store.OpenReadOnly(db)
	require.NoError(t, err)
	t.Cleanup(func() { rst.Close() })

	rreg := registry.New(rst.DB())

	_, err = rreg.Machine(ctx, hubUUIDC)
	require.ErrorIs(t, err, registry.ErrNotFound, "a refused machine is not in the registry")

	mb, err := rreg.Machine(ctx, hubUUIDB)
	require.NoError(t, err)
	require.True(t, mb.ConfigApplied.IsZero(), "B must not be configured before it is accepted")

	for _, m := range []*Machine{b, c} {
		require.NotContains(t, strings.Join(m.vm.Lines(), "\n"), "LABOS: "+nodeapi.MarkerConfigApplied, "%s must not receive a config", m.Name)
	}

	c.PowerOff()

	// A: in the inventory, configured through the tunnel
	a := boot("a", hubUUIDA, v1)

	line, err := a.vm.WaitMarker(ctx, node.MarkerSideroLink)
	require.NoError(t, err, "A must bring SideroLink up (console: %s, hub log: %s)", a.vm.ConsolePath(), hp.logPath)
	t.Logf("%s", line)

	status, err := a.vm.WaitStatus(ctx)
	require.NoError(t, err, "console: %s, hub log: %s", a.vm.ConsolePath(), hp.logPath)
	require.True(t, status.Configured, "the hub's config, delivered through the tunnel, must be in use")
	require.True(t, status.StateFormatted && status.TPMUnlocked, "STATE sealed: %+v", status)
	require.True(t, status.Healthy, "checks: %+v", status.Checks)
	require.Contains(t, strings.Join(a.vm.Lines(), "\n"), "LABOS: "+nodeapi.MarkerMaintenance, "the config came in maintenance mode")

	// an operator accepts B: it gets the cluster's config
	out, err = fleetctl(ctx, t, db, "machines", "accept", hubUUIDB, "--cluster", "lab", "--role", "controlplane")
	require.NoError(t, err, out)

	status, err = b.vm.WaitStatus(ctx)
	require.NoError(t, err, "console: %s, hub log: %s", b.vm.ConsolePath(), hp.logPath)
	require.True(t, status.Configured && status.Healthy, "B after accept: %+v", status)

	// the registry has A's report
	ma, err := rreg.Machine(ctx, hubUUIDA)
	require.NoError(t, err)
	require.Equal(t, "st-marien", ma.Site)
	require.Equal(t, registry.TransportGRPC, ma.Transport)
	require.False(t, ma.ConfigApplied.IsZero(), "the hub records the applied config (last error: %q)", ma.LastError)
	require.Equal(t, "enabled", ma.SecureBoot)

	// the hub restarts; both nodes come back by themselves
	hp.stop()
	hp.start(ctx)

	drv := talos.NewFactory(talos.WithMachineResolver(func(ctx context.Context, uuid string) (string, error) {
		return rreg.NodeEndpoint(ctx, uuid, hub.NodeAPIPort)
	}))
	talosconfig := filepath.Join(suite.Keys, "talosconfig")

	for _, uuid := range []string{hubUUIDA, hubUUIDB} {
		require.Equal(t, "1.0.0", waitHubVersion(ctx, t, drv, talosconfig, uuid, "1.0.0"), "machine %s after the hub restarted", uuid)
	}

	// the rollout: v2 pulled through the mirror on the hub's tunnel address
	v2 := image("v2", "2.0.0", token, spec.OutputUKI, spec.OutputInstaller)
	planImage := pushMirrored(t, v2)

	inv := filepath.Join(dir, "fleet.yaml")
	require.NoError(t, os.WriteFile(inv, []byte(fmt.Sprintf(`sites:
  - {name: st-marien, region: eu, timezone: Europe/Berlin}
clusters:
  - {name: hub-a, site: st-marien, talosconfig: %s, nodes: [{name: a, machine: %s, role: controlplane}]}
  - {name: hub-b, site: st-marien, talosconfig: %s, nodes: [{name: b, machine: %s, role: controlplane}]}
`, talosconfig, hubUUIDA, talosconfig, hubUUIDB)), 0o600))

	planPath := filepath.Join(dir, "plan.yaml")
	require.NoError(t, os.WriteFile(planPath, []byte(fmt.Sprintf(`name: hub-v2
image: %s
version: "2.0.0"
waves:
  - {name: canary, count: 1}
  - {name: rest, percent: 100}
health: {timeout: 4m, interval: 2s, soak: 20s}
`, planImage)), 0o600))

	rolloutLog, err := os.Create(filepath.Join(dir, "rollout.log"))
	require.NoError(t, err)
	defer rolloutLog.Close()

	ro := exec.Command(fleetctlBinary(t), "--db", db, "rollout", "start", "--inventory", inv, "--plan", planPath)
	ro.Stdout, ro.Stderr = rolloutLog, rolloutLog
	require.NoError(t, ro.Start())

	roDone := make(chan error, 1)
	go func() { roDone <- ro.Wait() }()

	// once the canary runs v2 (rebooted, healthy again, in its soak), the
	// hub's host crashes: hub and rollout are killed with SIGKILL
	canary := waitUpgradedConsole(ctx, t, roDone, rolloutLog.Name(), a, b)
	t.Logf("canary %s upgraded; killing the hub and the rollout", canary.Name)

	hp.kill()
	_ = ro.Process.Signal(syscall.SIGKILL)
	<-roDone

	hp.start(ctx)

	// A crashed hub lost its WireGuard sessions; each node is back with
	// its next handshake, at the latest when its session expires (WireGuard's
	// 180 s) or its link is declared down. Until then the resumed rollout
	// would find the node unreachable and skip it, by design: an operator
	// resumes once the machines answer (fleetctl machines).
	for _, m := range []*Machine{a, b} {
		uuid, want := hubUUIDA, "1.0.0"
		if m == b {
			uuid = hubUUIDB
		}

		if m == canary {
			want = "2.0.0"
		}

		require.Equal(t, want, waitHubVersion(ctx, t, drv, talosconfig, uuid, want), "machine %s after the hub crashed", uuid)
	}

	out, err = fleetctl(ctx, t, db, "rollout", "resume")
	require.NoError(t, err, "rollout resume: %s", out)

	for _, uuid := range []string{hubUUIDA, hubUUIDB} {
		require.Equal(t, "2.0.0", waitHubVersion(ctx, t, drv, talosconfig, uuid, "2.0.0"), "machine %s after the rollout", uuid)
	}

	for _, m := range []*Machine{a, b} {
		n := strings.Count(strings.Join(m.vm.Lines(), "\n"), "LABOS: "+nodeapi.MarkerUpgrading)
		require.Equal(t, 1, n, "%s must be upgraded exactly once (console: %s)", m.Name, m.vm.ConsolePath())
	}

	r, err := rst.Rollout(ctx, "")
	require.NoError(t, err)

	nodes, err := rst.Nodes(ctx, r.ID)
	require.NoError(t, err)

	for _, n := range nodes {
		require.Equal(t, store.NodeDone, n.State, "%+v", n)
		require.True(t, strings.HasPrefix(n.Endpoint, "machine:"), "recorded by machine, not by an address the hub may change: %+v", n)
	}

	// no secret in the hub's log; the join token only on the kernel's command line
	require.NotContains(t, hp.log(), token, "the join token is never logged")
	require.NotContains(t, hp.log(), revoked, "the join token is never logged")

	for _, m := range []*Machine{a, b} {
		for _, l := range m.vm.Lines() {
			if strings.Contains(l, token) && !strings.Contains(l, "ommand line: ") {
				t.Errorf("%s: the join token is on a console line that is not the kernel's command line: %q", m.Name, l)
			}
		}
	}
}

// waitHubVersion asks the machine's API through the hub's tunnel until it
// reports want (or the context ends) and returns what it last reported.
func waitHubVersion(ctx context.Context, t *testing.T, drv *talos.Factory, talosconfig, uuid, want string) string {
	t.Helper()

	// a node comes back after a hub restart within its WireGuard session's
	// lifetime (180 s) plus a keepalive; more on a loaded machine
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()

	var last string

	for {
		n, err := drv.Open(ctx, driver.Target{Cluster: "hub", Node: uuid, Endpoint: "machine:" + uuid, Talosconfig: talosconfig})
		if err == nil {
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			v, verr := n.Version(cctx)
			ccancel()
			n.Close() //nolint:errcheck

			if verr == nil {
				last = v
			} else {
				last = verr.Error()
			}
		} else {
			last = err.Error()
		}

		if last == want {
			return last
		}

		select {
		case <-ctx.Done():
			return last
		case <-time.After(2 * time.Second):
		}
	}
}

// waitUpgradedConsole waits until one node wrote its upgrade, rebooted and
// reported healthy again, and returns it.
func waitUpgradedConsole(ctx context.Context, t *testing.T, roDone chan error, roLog string, ms ...*Machine) *Machine {
	t.Helper()

	for {
		for _, m := range ms {
			lines := m.vm.Lines()
			upgraded := false

			for _, l := range lines {
				if strings.Contains(l, "LABOS: "+nodeapi.MarkerUpgrading) {
					upgraded = true
				}

				if upgraded && strings.Contains(l, "LABOS: "+nodeapi.MarkerHealthy) {
					return m
				}
			}
		}

		select {
		case err := <-roDone:
			data, _ := os.ReadFile(roLog)
			t.Fatalf("the rollout ended before the canary was upgraded: %v\n%s", err, data)
		case <-ctx.Done():
			t.Fatalf("no node was upgraded: %v (rollout log: %s)", ctx.Err(), roLog)
		case <-time.After(time.Second):
		}
	}
}

// pushMirrored pushes an installer to the suite's registry and names it
// under hubMirrored, which nodes reach only through their mirror.
func pushMirrored(t *testing.T, res *build.Result) string {
	t.Helper()

	p, err := layout.FromPath(filepath.Join(res.Dir, "installer"))
	require.NoError(t, err)

	idx, err := p.ImageIndex()
	require.NoError(t, err)

	m, err := idx.IndexManifest()
	require.NoError(t, err)
	require.Len(t, m.Manifests, 1)

	img, err := idx.Image(m.Manifests[0].Digest)
	require.NoError(t, err)

	tag, err := name.NewTag(fmt.Sprintf("127.0.0.1:%d/labfleet/installer-hub:%s", suite.RegistryPort, res.Record.Version), name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(tag, img))

	return fmt.Sprintf("%s/labfleet/installer-hub@%s", hubMirrored, m.Manifests[0].Digest)
}

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()

	data, err := yaml.Marshal(v)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, data, 0o600))
}

func freeTCPPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()

	_, port, _ := net.SplitHostPort(l.Addr().String())

	return port
}

func portOf(t *testing.T, hostport string) int {
	_, p, err := net.SplitHostPort(hostport)
	require.NoError(t, err)

	var n int
	_, err = fmt.Sscanf(p, "%d", &n)
	require.NoError(t, err)

	return n
}
