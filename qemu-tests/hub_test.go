package qemutests

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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

// TestHubNoInboundPort is a node behind a hospital firewall: its VM has no
// inbound forward at all (no hostfwd), and its only outward path is one
// TCP forward to the fleet hub (restrict=on). Its image carries the
// SideroLink kernel arguments (gRPC tunnel, a site join token); the hub
// lists its SMBIOS UUID in the inventory. It enrolls, the hub applies its
// machine config through the tunnel in maintenance mode, the node seals
// STATE and reports healthy, and the hub's registry has its report.
func TestHubNoInboundPort(t *testing.T) {
	sctx := scenario(t)

	ctx, cancel := context.WithTimeout(context.WithoutCancel(sctx), 35*time.Minute)
	defer cancel()

	const uuid = "5b1d6c2e-4f0a-4c1b-9e3a-2f6d8a7b9c01"

	dir := machineDir("hub")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tpm"), 0o755))

	// the hub, in-process, with the suite's node config for lab/controlplane
	cfgDir := filepath.Join(dir, "configs")
	require.NoError(t, os.MkdirAll(filepath.Join(cfgDir, "lab"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(cfgDir, "lab", "controlplane.yaml"), suite.NodeConfig, 0o600))

	cfg := hub.Defaults()
	cfg.Interface = fmt.Sprintf("lfqh%d", os.Getpid()%100000)
	cfg.Prefix = fmt.Sprintf("fdae:%04x:%04x::/64", os.Getpid()&0xffff, time.Now().UnixNano()&0xffff)
	cfg.APIListen = "127.0.0.1:" + freeTCPPort(t)
	cfg.WireGuardListen = "127.0.0.1:0"
	cfg.ConfigDir = cfgDir

	st, err := store.Open(filepath.Join(dir, "fleet.db"), store.Options{Synchronous: "NORMAL"})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })

	reg := registry.New(st.DB())
	token, _, err := reg.CreateToken(ctx, "st-marien", "qemu-test")
	require.NoError(t, err)

	hubLog, err := os.Create(filepath.Join(dir, "hub.log"))
	require.NoError(t, err)
	t.Cleanup(func() { hubLog.Close() })

	h, err := hub.New(cfg, reg, slog.New(slog.NewTextHandler(hubLog, nil)), hub.Options{
		Inventory:      hub.Inventory{uuid: {UUID: uuid, Cluster: "lab", Role: "controlplane"}},
		ReconcileEvery: time.Second,
	})
	require.NoError(t, err)

	hctx, hcancel := context.WithCancel(context.Background())
	hdone := make(chan error, 1)

	go func() { hdone <- h.Run(hctx) }()

	t.Cleanup(func() {
		hcancel()
		<-hdone
	})

	select {
	case <-h.Ready():
	case err := <-hdone:
		t.Fatalf("hub did not start: %v (log: %s)", err, hubLog.Name())
	}

	// the image: the lab definition with the site's SideroLink settings
	def, err := spec.Load(filepath.Join(suite.Root, "images", "lab.yaml"))
	require.NoError(t, err)

	def.Version = "1.0.0"
	def.Base.Layout = filepath.Join(suite.Work, "labbase", "oci")
	def.Outputs = []string{spec.OutputUKI, spec.OutputDisk}
	def.SideroLink = &spec.SideroLink{API: "grpc://" + harness.GuestHubAddr, JoinToken: token, Tunnel: true,
		HubAddress: h.ServerAddress().String(), EventsPort: cfg.EventSinkPort, LogsPort: cfg.LogReceiverPort}
	def.Defaults()
	require.NoError(t, def.Validate("lab.yaml"))

	baker := bake.New(suite.Root)
	defer baker.Close()

	res, err := build.Build(ctx, def, build.Options{
		Root: suite.Root, OutDir: filepath.Join(dir, "image"), KeysDir: suite.Keys, Baker: baker,
		ToolsPath: filepath.Join(suite.Root, "_cache", "lab-assets", "tools", "bin"),
	})
	require.NoError(t, err)

	m := &Machine{t: t, Name: "hub", Dir: dir, Disk: filepath.Join(dir, "disk.raw"), Vars: filepath.Join(dir, "vars.fd"), TPM: filepath.Join(dir, "tpm")}
	sparseCopy(t, filepath.Join(res.Dir, "disk.raw"), m.Disk)
	sparseCopy(t, harness.OVMFVarsEmpty, m.Vars)

	startCtx, scancel := context.WithTimeout(ctx, 30*time.Minute)
	defer scancel()

	vm, err := harness.Start(startCtx, harness.Spec{
		Name: m.Name, Disk: m.Disk, DiskInPlace: true, Vars: m.Vars, VarsInPlace: true,
		TPM: true, TPMStateDir: m.TPM, NoInbound: true, HubPort: portOf(t, cfg.APIListen), UUID: uuid,
		WorkDir: filepath.Join(dir, "run-1"), WaitTimeout: 6 * time.Minute,
	})
	require.NoError(t, err)
	m.vm = vm
	t.Cleanup(m.PowerOff)
	t.Logf("booting (console: %s, hub log: %s)", vm.ConsolePath(), hubLog.Name())

	require.Empty(t, vm.APIEndpoint(), "nothing is forwarded into the VM")
	qemuArgs, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", vm.PID()))
	require.NoError(t, err)
	require.NotContains(t, string(qemuArgs), "hostfwd", "no inbound forward at all")
	require.Contains(t, string(qemuArgs), "restrict=on,guestfwd=tcp:"+harness.GuestHubAddr, "the one outward path is the hub's")

	line, err := vm.WaitMarker(ctx, node.MarkerSideroLink)
	require.NoError(t, err, "the node must bring SideroLink up (console: %s, hub log: %s)", vm.ConsolePath(), hubLog.Name())
	t.Logf("%s", line)

	status, err := vm.WaitStatus(ctx)
	require.NoError(t, err, "console: %s, hub log: %s", vm.ConsolePath(), hubLog.Name())
	require.True(t, status.Configured, "the hub's config, delivered through the tunnel, must be in use")
	require.True(t, status.StateFormatted && status.TPMUnlocked, "STATE sealed: %+v", status)
	require.True(t, status.Healthy, "checks: %+v", status.Checks)

	mach, err := reg.Machine(ctx, uuid)
	require.NoError(t, err)
	require.Equal(t, "st-marien", mach.Site)
	require.Equal(t, registry.TransportGRPC, mach.Transport)
	require.False(t, mach.ConfigApplied.IsZero(), "the hub records the applied config (last error: %q)", mach.LastError)

	deadline := time.Now().Add(2 * time.Minute)
	for mach.ImageVersion == "" && time.Now().Before(deadline) {
		time.Sleep(time.Second)
		mach, _ = reg.Machine(ctx, uuid)
	}

	require.Equal(t, "1.0.0", mach.ImageVersion, "the node's report reached the hub")
	require.Equal(t, "enabled", mach.SecureBoot)

	logText, _ := os.ReadFile(hubLog.Name())
	require.NotContains(t, string(logText), token, "the join token is never logged")
	// The kernel prints its command line, join token included (as on a
	// Talos node: the token is baked on purpose, images/README.md); labos
	// itself never prints it.
	console, _ := os.ReadFile(vm.ConsolePath())
	for _, l := range strings.Split(string(console), "\n") {
		if strings.Contains(l, token) && !strings.Contains(l, "ommand line: ") {
			t.Errorf("the join token is on a console line that is not the kernel's command line: %q", l)
		}
	}
	require.Contains(t, string(console), "LABOS: "+nodeapi.MarkerMaintenance, "the config came in maintenance mode")
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
