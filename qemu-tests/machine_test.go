package qemutests

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/harness"
	"github.com/labfleet/labfleet/lab/nodeapi"
	"github.com/labfleet/labfleet/lab/nodeapi/nodestate"
)

// Machine is one emulated computer: a disk, UEFI variables and a TPM that
// persist across power cycles (each Boot is a new QEMU process).
type Machine struct {
	t    *testing.T
	Name string
	Dir  string
	Disk string
	Vars string
	TPM  string
	runs int
	vm   *harness.VM
	slot func() // gives back the VM slot the running machine holds
}

// NewMachine makes a machine whose disk is a copy of a variant's disk image,
// with empty UEFI variables (Setup Mode) and a blank TPM.
func (s *Suite) NewMachine(t *testing.T, name, variant string) *Machine {
	t.Helper()

	dir := machineDir(name)
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "tpm"), 0o755))

	t.Logf("machine %s in %s", name, dir)
	m := &Machine{t: t, Name: name, Dir: dir, Disk: filepath.Join(dir, "disk.raw"), Vars: filepath.Join(dir, "vars.fd"), TPM: filepath.Join(dir, "tpm")}
	sparseCopy(t, filepath.Join(s.Images[variant].Dir, "disk.raw"), m.Disk)
	sparseCopy(t, harness.OVMFVarsEmpty, m.Vars)

	return m
}

var machineSeq atomic.Int32

// machineDir is a short, unique folder: swtpm and QEMU take paths in
// comma-separated options and sockets have a 108-byte limit, so test names
// (with spaces, commas, colons) are kept out of it.
func machineDir(name string) string {
	return filepath.Join(suite.Work, "m", fmt.Sprintf("%02d-%s", machineSeq.Add(1), name))
}

// Clone copies a powered-off machine (disk, vars, TPM state).
func (m *Machine) Clone(t *testing.T, name string) *Machine {
	t.Helper()
	require.Nil(t, m.vm, "clone a machine only while it is off")

	dir := machineDir(name)
	t.Logf("machine %s cloned from %s into %s", name, m.Name, dir)
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.MkdirAll(dir, 0o755))

	c := &Machine{t: t, Name: name, Dir: dir, Disk: filepath.Join(dir, "disk.raw"), Vars: filepath.Join(dir, "vars.fd"), TPM: filepath.Join(dir, "tpm")}
	sparseCopy(t, m.Disk, c.Disk)
	sparseCopy(t, m.Vars, c.Vars)
	out, err := exec.Command("cp", "-a", m.TPM, c.TPM).CombinedOutput()
	require.NoError(t, err, "copying TPM state: %s", out)

	return c
}

// BootOptions vary one power-on.
type BootOptions struct {
	FreshTPM bool   // a different (blank) TPM
	NoTPM    bool   // no TPM at all
	Code     string // firmware code file; default Secure Boot OVMF
	// ResetFirmware replaces the UEFI variables with an empty store: Setup
	// Mode, Secure Boot off (what "clear keys" in a firmware menu does).
	ResetFirmware bool
	// NoConfig boots without a config to deliver: the test talks to the
	// node in maintenance mode itself.
	NoConfig bool
	// RegistryPort is what the guest reaches as its registry (10.0.2.100:5000):
	// default the suite's registry; a site cache in front of it, say.
	RegistryPort int
}

// Boot powers the machine on; the VM is stopped at test cleanup.
func (m *Machine) Boot(ctx context.Context, o BootOptions) *harness.VM {
	m.t.Helper()
	require.Nil(m.t, m.vm, "machine %s is already running", m.Name)

	m.runs++
	tpm := m.TPM

	if o.ResetFirmware {
		sparseCopy(m.t, harness.OVMFVarsEmpty, m.Vars)
	}

	if o.FreshTPM {
		tpm = filepath.Join(m.Dir, fmt.Sprintf("tpm-fresh-%d", m.runs))
		require.NoError(m.t, os.MkdirAll(tpm, 0o755))
	}

	spec := harness.Spec{
		Name: m.Name, Disk: m.Disk, DiskInPlace: true, Vars: m.Vars, VarsInPlace: true,
		TPM: !o.NoTPM, RegistryPort: cmp.Or(o.RegistryPort, suite.RegistryPort), MachineConfig: suite.NodeConfig,
		WorkDir: filepath.Join(m.Dir, fmt.Sprintf("run-%d", m.runs)), WaitTimeout: 4 * time.Minute,
	}
	if !o.NoTPM {
		spec.TPMStateDir = tpm
	}

	if o.NoConfig {
		spec.MachineConfig = nil
	}

	if o.Code != "" {
		spec.Code = o.Code
	}

	// Waiting for a VM slot is not the scenario's time: with two slots
	// shared by every parallel scenario (and make soak's repeats), a turn
	// can take minutes. The VM itself does not live by this context.
	startCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Minute)
	defer cancel()

	release := bootSlot(startCtx, m.t)

	vm, err := harness.Start(startCtx, spec)
	if err != nil {
		release()
	}

	require.NoError(m.t, err, "starting %s", m.Name)

	m.vm, m.slot = vm, release
	m.t.Cleanup(func() { m.PowerOff() })
	m.t.Logf("%s: booting (console: %s)", m.Name, vm.ConsolePath())

	return vm
}

// PowerOff stops the VM (hard) if it runs.
func (m *Machine) PowerOff() {
	if m.vm == nil {
		return
	}

	m.vm.Kill() //nolint:errcheck
	m.stopped()
}

// stopped releases what a powered-off machine no longer needs: its QEMU
// and swtpm processes and its VM slot.
func (m *Machine) stopped() {
	m.vm.Close() //nolint:errcheck
	m.vm = nil

	if m.slot != nil {
		m.slot()
		m.slot = nil
	}
}

// Shutdown asks the guest to power off and waits, then cleans up.
func (m *Machine) Shutdown(ctx context.Context) {
	if m.vm == nil {
		return
	}

	m.vm.Shutdown(ctx, 20*time.Second) //nolint:errcheck
	m.stopped()
}

// WaitStatus waits for the next status marker, failing with the console's location.
func (m *Machine) WaitStatus(ctx context.Context) nodeapi.Status {
	m.t.Helper()

	st, err := m.vm.WaitStatus(ctx)
	require.NoError(m.t, err, "%s: no labos status (console: %s)", m.Name, m.vm.ConsolePath())

	return st
}

// NodeState reads the node's state through its Talos API (Version and
// COSI resources) with the suite's talosconfig, failing with the console's
// location.
func (m *Machine) NodeState(ctx context.Context) nodestate.State {
	m.t.Helper()

	st, err := m.vm.NodeState(ctx, filepath.Join(suite.Keys, "talosconfig"))
	require.NoError(m.t, err, "%s: node state through the API (console: %s)", m.Name, m.vm.ConsolePath())

	return st
}

// Client is a machine API client over mTLS with the suite's talosconfig.
func (m *Machine) Client(ctx context.Context) *client.Client {
	m.t.Helper()

	c, err := client.New(ctx, client.WithConfigFromFile(filepath.Join(suite.Keys, "talosconfig")), client.WithEndpoints(m.vm.APIEndpoint()))
	require.NoError(m.t, err)
	m.t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return c
}

func sparseCopy(t *testing.T, src, dst string) {
	t.Helper()

	out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput()
	require.NoError(t, err, "cp %s: %s", src, out)
	require.NoError(t, os.Chmod(dst, 0o644))
}

// withESP opens a powered-off machine's ESP for fn.
func (m *Machine) withESP(fn func(fs filesystem.FileSystem)) {
	m.t.Helper()
	require.Nil(m.t, m.vm, "edit the ESP only while the machine is off")

	d, err := diskfs.Open(m.Disk)
	require.NoError(m.t, err)
	defer d.Close() //nolint:errcheck

	fs, err := d.GetFilesystem(1)
	require.NoError(m.t, err)

	fn(fs)
}

// ESPRead reads a file from the ESP.
func (m *Machine) ESPRead(path string) (data []byte) {
	m.t.Helper()

	m.withESP(func(fs filesystem.FileSystem) {
		f, err := fs.OpenFile(path, os.O_RDONLY)
		require.NoError(m.t, err, "opening %s on the ESP", path)

		data, err = io.ReadAll(f)
		require.NoError(m.t, err)
	})

	return data
}

// ESPWrite replaces a file on the ESP.
func (m *Machine) ESPWrite(path string, data []byte) {
	m.t.Helper()

	m.withESP(func(fs filesystem.FileSystem) {
		require.NoError(m.t, fs.Remove(path), "removing %s", path)

		f, err := fs.OpenFile(path, os.O_CREATE|os.O_RDWR)
		require.NoError(m.t, err, "creating %s on the ESP", path)

		_, err = f.Write(data)
		require.NoError(m.t, err)
		require.NoError(m.t, f.Close())
	})
}

// ESPRemove deletes a file from the ESP.
func (m *Machine) ESPRemove(path string) {
	m.t.Helper()

	m.withESP(func(fs filesystem.FileSystem) {
		require.NoError(m.t, fs.Remove(path), "removing %s", path)
	})
}

// StateHeader reads the first bytes of the powered-off machine's STATE
// partition (by GPT name), to tell a LUKS2 volume from an untouched one.
func (m *Machine) StateHeader() []byte {
	m.t.Helper()
	require.Nil(m.t, m.vm, "read the disk only while the machine is off")

	d, err := diskfs.Open(m.Disk, diskfs.WithOpenMode(diskfs.ReadOnly))
	require.NoError(m.t, err)
	defer d.Close() //nolint:errcheck

	pt, err := d.GetPartitionTable()
	require.NoError(m.t, err)

	gt, ok := pt.(*gpt.Table)
	require.True(m.t, ok, "the lab disk has a GPT")

	for _, p := range gt.Partitions {
		if p.Name != "STATE" {
			continue
		}

		f, err := os.Open(m.Disk)
		require.NoError(m.t, err)
		defer f.Close() //nolint:errcheck

		buf := make([]byte, 4096)
		_, err = f.ReadAt(buf, int64(p.Start)*int64(d.LogicalBlocksize))
		require.NoError(m.t, err)

		return buf
	}

	m.t.Fatalf("%s has no STATE partition", m.Name)

	return nil
}

// ESPList lists a directory of the ESP.
func (m *Machine) ESPList(dir string) (names []string) {
	m.t.Helper()

	m.withESP(func(fs filesystem.FileSystem) {
		// go-diskfs's ReadDir takes io/fs-style paths (no leading slash).
		entries, err := fs.ReadDir(strings.TrimPrefix(dir, "/"))
		require.NoError(m.t, err)

		for _, e := range entries {
			names = append(names, e.Name())
		}
	})

	return names
}
