package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

const instanceFile = "instance.json"

// Instance is what a VM leaves in its work dir (instance.json) so another
// process (labctl ps, down, console) can find and stop a detached VM.
type Instance struct {
	Name        string    `json:"name"`
	WorkDir     string    `json:"workDir"`
	QEMUPID     int       `json:"qemuPid"`
	SwtpmPID    int       `json:"swtpmPid,omitempty"`
	QMPSocket   string    `json:"qmpSocket"`
	SocketDir   string    `json:"socketDir"`
	APIEndpoint string    `json:"apiEndpoint"`
	Console     string    `json:"console"`
	Disk        string    `json:"disk"`
	Vars        string    `json:"vars"`
	TPMStateDir string    `json:"tpmStateDir,omitempty"`
	Accel       string    `json:"accel"`
	StartedAt   time.Time `json:"startedAt"`
}

func (vm *VM) writeInstance() error {
	inst := Instance{
		Name:        vm.spec.Name,
		WorkDir:     vm.workDir,
		QEMUPID:     vm.PID(),
		QMPSocket:   vm.qmpSocket(),
		SocketDir:   vm.sockDir,
		APIEndpoint: vm.APIEndpoint(),
		Console:     vm.ConsolePath(),
		Disk:        vm.diskPath,
		Vars:        vm.varsPath,
		TPMStateDir: vm.tpmDir,
		Accel:       vm.accel,
		StartedAt:   vm.started,
	}

	if vm.swtpm != nil && vm.swtpm.Process != nil {
		inst.SwtpmPID = vm.swtpm.Process.Pid
	}

	data, err := json.MarshalIndent(inst, "", "  ")
	if err != nil {
		return err
	}

	return os.WriteFile(filepath.Join(vm.workDir, instanceFile), data, 0o644)
}

// Instance returns the VM's instance record.
func (vm *VM) Instance() (*Instance, error) { return LoadInstance(vm.workDir) }

// ErrNoInstance means a work dir holds no running or stopped VM record.
var ErrNoInstance = errors.New("no VM instance")

// LoadInstance reads the instance record a VM wrote in workDir.
func LoadInstance(workDir string) (*Instance, error) {
	data, err := os.ReadFile(filepath.Join(workDir, instanceFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", workDir, ErrNoInstance)
		}

		return nil, err
	}

	var inst Instance
	if err := json.Unmarshal(data, &inst); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(workDir, instanceFile), err)
	}

	return &inst, nil
}

// pidAlive checks that pid runs and is the program we started (pids are
// reused once a process is gone).
func pidAlive(pid int, comm string) bool {
	if pid <= 0 {
		return false
	}

	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return false
	}

	name := strings.TrimSpace(string(data))

	// A zombie still has its comm; check state too.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil {
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return false
		}
	}

	return strings.HasPrefix(comm, name) || strings.HasPrefix(name, comm)
}

// Running reports whether the instance's QEMU still runs.
func (i *Instance) Running() bool { return pidAlive(i.QEMUPID, "qemu-system-x86_64") }

// Uptime is how long the instance has been running.
func (i *Instance) Uptime() time.Duration { return time.Since(i.StartedAt) }

// Stop ends a (usually detached) instance: QMP quit, then SIGKILL after
// grace; swtpm follows (it was started with --terminate) or is killed; the
// socket dir, pid files and the instance record are removed.
func (i *Instance) Stop(ctx context.Context, grace time.Duration) error {
	if i.Running() {
		if mon, err := qmp.NewSocketMonitor("unix", i.QMPSocket, 2*time.Second); err == nil {
			if mon.Connect() == nil {
				mon.Run([]byte(`{"execute":"quit"}`)) //nolint:errcheck
			}

			mon.Disconnect() //nolint:errcheck
		}

		deadline := time.Now().Add(grace)
		for i.Running() && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
		}

		if i.Running() {
			if err := syscall.Kill(i.QEMUPID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("killing qemu %d: %w", i.QEMUPID, err)
			}
		}
	}

	for n := 0; n < 50 && pidAlive(i.SwtpmPID, "swtpm"); n++ {
		if n == 20 {
			syscall.Kill(i.SwtpmPID, syscall.SIGKILL) //nolint:errcheck
		}

		time.Sleep(100 * time.Millisecond)
	}

	var errs []error

	if i.SocketDir != "" && strings.HasPrefix(i.SocketDir, "/tmp/lf-") {
		errs = append(errs, os.RemoveAll(i.SocketDir))
	}

	for _, f := range []string{"qemu.pid", "swtpm.pid", instanceFile} {
		if err := os.Remove(filepath.Join(i.WorkDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}

	return errors.Join(errs...)
}
