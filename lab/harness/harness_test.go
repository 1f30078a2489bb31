package harness

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/harness/testimage"
	"github.com/labfleet/labfleet/lab/labbase"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// need fails in CI and skips elsewhere when a tool or asset is missing.
func need(t testing.TB, what string, err error) {
	t.Helper()

	if err == nil {
		return
	}

	if os.Getenv("CI") == "true" {
		t.Fatalf("%s missing in CI: %v", what, err)
	}

	t.Skipf("%s missing: %v", what, err)
}

func requireVMTools(t testing.TB) {
	t.Helper()

	for _, bin := range []string{"qemu-system-x86_64", "qemu-img", "swtpm", "swtpm_setup", "objcopy"} {
		_, err := exec.LookPath(bin)
		need(t, bin, err)
	}

	_, err := os.Stat(OVMFCode)
	need(t, "OVMF (package ovmf)", err)
}

var (
	diskOnce sync.Once
	diskPath string
	diskErr  error
)

// trivialDisk builds, once per test binary, a disk whose UKI runs the
// trivial init: it prints the init and poweroff markers and powers off.
func trivialDisk(t testing.TB) string {
	t.Helper()
	requireVMTools(t)

	repo, err := labbase.FindRepoDir()
	require.NoError(t, err)

	assets, err := labbase.LoadAssets(labbase.DefaultAssetsDir(repo))
	need(t, "lab assets (hack/fetch-lab-assets.sh)", err)

	diskOnce.Do(func() {
		dir, err := os.MkdirTemp("", "harness-test-disk-")
		if err != nil {
			diskErr = err

			return
		}

		res, err := labbase.Build(context.Background(), labbase.Options{
			AssetsDir: assets.Dir, OutDir: dir, Version: "harness-test", TrivialInit: true,
		})
		if err != nil {
			diskErr = err

			return
		}

		diskPath = filepath.Join(dir, "disk.raw")
		diskErr = testimage.Disk(context.Background(), testimage.Options{
			Stub: assets.SystemdStub, Boot: assets.SystemdBoot, Kernel: assets.Vmlinuz,
			Initramfs: res.InitramfsPath, Cmdline: "console=ttyS0 quiet",
		}, diskPath)
	})
	require.NoError(t, diskErr)

	return diskPath
}

func TestMain(m *testing.M) {
	code := m.Run()

	if diskPath != "" {
		os.RemoveAll(filepath.Dir(diskPath)) //nolint:errcheck
	}

	os.Exit(code)
}

func TestBootTrivialUnderOVMF(t *testing.T) {
	disk := trivialDisk(t)
	t.Parallel()

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	vm, err := Start(ctx, Spec{Name: "trivial", Disk: disk, TPM: true})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, vm.Close()) })

	details, err := vm.WaitMarker(ctx, nodeapi.MarkerInit)
	require.NoError(t, err)
	assert.Contains(t, details, "trivial=true")

	_, err = vm.WaitMarker(ctx, nodeapi.MarkerPoweroff)
	require.NoError(t, err)
	require.NoError(t, vm.Wait(ctx), "the guest powers off, QEMU exits cleanly")

	// The console was consumed in order: the init marker is behind us.
	_, err = vm.WaitMarker(ctx, nodeapi.MarkerInit)
	require.ErrorIs(t, err, ErrExited)

	data, err := os.ReadFile(vm.ConsolePath())
	require.NoError(t, err)
	assert.Contains(t, string(data), "LABOS: init")
}

func TestTPMAndQMP(t *testing.T) {
	disk := trivialDisk(t)
	t.Parallel()

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	tpmDir := filepath.Join(t.TempDir(), "tpm")

	// -no-shutdown: a guest power-off stops the VM instead of ending QEMU,
	// so a reset can boot it again.
	vm, err := Start(ctx, Spec{Name: "qmp", Disk: disk, TPM: true, TPMStateDir: tpmDir, ExtraArgs: []string{"-no-shutdown"}})
	require.NoError(t, err)
	t.Cleanup(func() { vm.Close() }) //nolint:errcheck

	raw, err := vm.QMP(ctx, "query-tpm", nil)
	require.NoError(t, err)

	var tpms []struct {
		ID    string `json:"id"`
		Model string `json:"model"`
	}

	require.NoError(t, json.Unmarshal(raw, &tpms))
	require.Len(t, tpms, 1)
	assert.Equal(t, "tpm-tis", tpms[0].Model)

	st, err := vm.Status(ctx)
	require.NoError(t, err)
	assert.True(t, st.Running, "status %q", st.Status)

	// The TPM was provisioned in the given dir with a CA of its own.
	assert.FileExists(t, filepath.Join(tpmDir, "tpm2-00.permall"))
	assert.FileExists(t, filepath.Join(tpmDir, "localca", "issuercert.pem"))

	_, err = vm.WaitMarker(ctx, nodeapi.MarkerPoweroff)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err := vm.Status(ctx)

		return err == nil && st.Status == "shutdown"
	}, 30*time.Second, 100*time.Millisecond, "QMP reports the powered-off guest")

	// Reset boots through firmware again: a second init marker follows.
	require.NoError(t, vm.Reset(ctx))
	_, err = vm.WaitMarker(ctx, nodeapi.MarkerInit)
	require.NoError(t, err)
}

func TestCloseLeavesNothing(t *testing.T) {
	disk := trivialDisk(t)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	vm, err := Start(ctx, Spec{Name: "cleanup", Disk: disk, TPM: true})
	require.NoError(t, err)

	inst, err := vm.Instance()
	require.NoError(t, err)
	require.True(t, inst.Running())
	require.True(t, pidAlive(inst.SwtpmPID, "swtpm"))

	_, err = vm.WaitConsole(ctx, regexp.MustCompile(`.`)) // firmware or kernel said something
	require.NoError(t, err)

	require.NoError(t, vm.Close())
	require.NoError(t, vm.Close(), "Close is idempotent")

	assert.False(t, inst.Running(), "qemu must be gone")
	assert.False(t, pidAlive(inst.SwtpmPID, "swtpm"), "swtpm must be gone")
	assert.NoDirExists(t, vm.WorkDir())
	assert.NoDirExists(t, inst.SocketDir)

	// Slots were released: two more VMs can start.
	for range MaxConcurrentVMs {
		v, err := Start(ctx, Spec{Name: "slot", Disk: disk})
		require.NoError(t, err)
		t.Cleanup(func() { v.Close() }) //nolint:errcheck
	}
}

func TestSpecValidate(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "d.raw")
	require.NoError(t, os.WriteFile(disk, []byte("x"), 0o644))

	for _, tc := range []struct {
		name string
		spec Spec
		want string
	}{
		{"no disk", Spec{}, "Disk is required"},
		{"missing disk", Spec{Disk: "/nonexistent"}, "Disk"},
		{"bad accel", Spec{Disk: disk, Accel: "hvf"}, "Accel"},
		{"missing vars", Spec{Disk: disk, Vars: "/nonexistent.fd"}, "Vars"},
		{"tpm dir without tpm", Spec{Disk: disk, TPMStateDir: "/tmp/x"}, "TPM is off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}

	require.NoError(t, (&Spec{Disk: disk}).Validate())
}

func TestNetdevArg(t *testing.T) {
	assert.Equal(t, "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:4000-:50000", netdevArg(4000, 0, 0))
	assert.Equal(t, "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:4000-:50000,guestfwd=tcp:10.0.2.100:5000-cmd:socat - TCP:127.0.0.1:5555",
		netdevArg(4000, 5555, 0))
}

// A node behind a firewall: no hostfwd at all, restrict=on, and the one
// outward TCP path to the hub.
func TestNetdevArgNoInbound(t *testing.T) {
	arg := netdevArg(0, 0, 7099)
	assert.Equal(t, "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.101:8099-cmd:socat - TCP:127.0.0.1:7099", arg)
	assert.NotContains(t, arg, "hostfwd")
}

func TestSpecNoInboundValidation(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "d.raw")
	require.NoError(t, os.WriteFile(disk, nil, 0o644))

	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Disk: disk, NoInbound: true, MachineConfig: []byte("x")}, "spec: MachineConfig is set with NoInbound"},
		{Spec{Disk: disk, NoInbound: true, APIPort: 4000}, "spec: APIPort is set with NoInbound"},
		{Spec{Disk: disk, HubPort: 70000}, "spec: HubPort 70000 is not a port"},
		{Spec{Disk: disk, UUID: "not-a-uuid"}, `spec: UUID "not-a-uuid" is not a UUID`},
	} {
		assert.ErrorContains(t, tc.spec.Validate(), tc.want)
	}

	require.NoError(t, (&Spec{Disk: disk, NoInbound: true, HubPort: 7099, UUID: "1b4e28ba-2fa1-11d2-883f-0016d3cca427"}).Validate())
}
