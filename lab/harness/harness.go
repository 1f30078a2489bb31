// Package harness boots lab disk images under QEMU with OVMF Secure Boot
// firmware and an optional swtpm TPM, streams the serial console to a file
// and to waiters, and talks QMP. It is what labctl and the qemu-tests drive.
//
// A VM's network is QEMU user-mode networking with restrict=on: the guest
// reaches nothing but the node API port forwarded to 127.0.0.1 and, if the
// caller asks, one registry port on 127.0.0.1 seen by the guest as
// nodeapi.GuestRegistryAddr. With Spec.NoInbound nothing is forwarded
// inwards, and Spec.HubPort is the guest's only outward path (TCP, to the
// fleet hub as GuestHubAddr): the node is reached only through the
// SideroLink tunnel it opens.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// MaxConcurrentVMs is how many VMs run at once on this machine, across
// all processes (see SlotDirEnv): two is what a 2-core machine carries
// under TCG.
const MaxConcurrentVMs = 2

// ErrExited is returned by waits when QEMU exits before the awaited output.
var ErrExited = errors.New("vm exited")

// VM is a running (or finished) virtual machine.
type VM struct {
	spec     Spec
	log      *slog.Logger
	workDir  string
	ownsWork bool // temporary work dir: removed by Close
	sockDir  string
	diskPath string
	varsPath string
	tpmDir   string
	apiPort  int
	accel    string
	started  time.Time

	qemu        *exec.Cmd
	swtpm       *exec.Cmd
	swtpmExited chan struct{}

	exited  chan struct{} // closed when QEMU exits
	exitErr error

	console  *consoleTail
	cursorMu sync.Mutex
	cursor   int // console lines consumed by waits

	qmpMu sync.Mutex
	mon   *qmp.SocketMonitor

	closeOnce sync.Once
	closeErr  error
	slot      *slot
}

// Start boots a VM described by spec. It waits for a free slot (at most
// MaxConcurrentVMs per process), so callers should Close every VM, usually
// with defer or t.Cleanup.
func Start(ctx context.Context, spec Spec) (*VM, error) {
	return StartWithLogger(ctx, spec, nil)
}

// StartWithLogger is Start with progress sent to log (nil discards).
func StartWithLogger(ctx context.Context, spec Spec, log *slog.Logger) (vm *VM, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}

	spec.setDefaults()

	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	sl, err := acquireSlot(ctx, slotDir())
	if err != nil {
		return nil, fmt.Errorf("starting %s: waiting for a VM slot: %w", spec.Name, err)
	}

	vm = &VM{spec: spec, log: log.With("vm", spec.Name), slot: sl, exited: make(chan struct{})}

	defer func() {
		if err != nil {
			vm.Close() //nolint:errcheck
			vm = nil
		}
	}()

	if err := vm.prepare(ctx); err != nil {
		return vm, fmt.Errorf("starting %s: %w", spec.Name, err)
	}

	if err := vm.launch(ctx); err != nil {
		return vm, fmt.Errorf("starting %s: %w", spec.Name, err)
	}

	return vm, nil
}

func (vm *VM) prepare(ctx context.Context) error {
	var err error

	if vm.spec.WorkDir == "" {
		if vm.workDir, err = os.MkdirTemp("", "labvm-"+vm.spec.Name+"-"); err != nil {
			return err
		}

		vm.ownsWork = true
	} else {
		vm.workDir = vm.spec.WorkDir
		if err = os.MkdirAll(vm.workDir, 0o755); err != nil {
			return err
		}
	}

	// AF_UNIX paths are limited to 108 bytes; work dirs under a checkout
	// easily exceed that, so sockets live in a short directory of their own.
	if vm.sockDir, err = os.MkdirTemp("/tmp", "lf-"); err != nil {
		return err
	}

	if err = vm.prepareVars(); err != nil {
		return fmt.Errorf("firmware vars: %w", err)
	}

	if err = vm.prepareDisk(ctx); err != nil {
		return fmt.Errorf("disk: %w", err)
	}

	if vm.apiPort = vm.spec.APIPort; vm.apiPort == 0 && !vm.spec.NoInbound {
		if vm.apiPort, err = pickPort(); err != nil {
			return fmt.Errorf("api port: %w", err)
		}
	}

	switch vm.spec.Accel {
	case AccelAuto:
		vm.accel = AccelTCG
		if ProbeKVM(ctx) {
			vm.accel = AccelKVM
		}
	default:
		vm.accel = vm.spec.Accel
	}

	return nil
}

func (vm *VM) prepareVars() error {
	vm.varsPath = filepath.Join(vm.workDir, "vars.fd")

	src := vm.spec.Vars

	switch src {
	case "", "empty":
		src = OVMFVarsEmpty
	case "ms":
		src = OVMFVarsMS
	default:
		if vm.spec.VarsInPlace {
			vm.varsPath = src

			return nil
		}
	}

	return copyFile(src, vm.varsPath, 0o644)
}

func (vm *VM) prepareDisk(ctx context.Context) error {
	if vm.spec.DiskInPlace {
		vm.diskPath = vm.spec.Disk

		return nil
	}

	abs, err := filepath.Abs(vm.spec.Disk)
	if err != nil {
		return err
	}

	// A copy-on-write overlay costs nothing where a copy of a disk image
	// would cost seconds, and leaves the caller's image untouched all the same.
	vm.diskPath = filepath.Join(vm.workDir, "disk.qcow2")

	return CreateOverlay(ctx, abs, vm.diskPath)
}

// imageFormat tells qcow2 from raw by the qcow2 magic.
func imageFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close() //nolint:errcheck

	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err == nil && string(magic) == "QFI\xfb" {
		return "qcow2", nil
	}

	return "raw", nil
}

func (vm *VM) procAttr() *syscall.SysProcAttr {
	if vm.spec.Detach {
		return &syscall.SysProcAttr{Setsid: true}
	}

	// Take the VM down with us if this process dies without Close (a test
	// binary killed on timeout), so no QEMU is left behind.
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func (vm *VM) launch(ctx context.Context) error {
	if vm.spec.TPM {
		if err := vm.startSwtpm(ctx); err != nil {
			return fmt.Errorf("swtpm: %w", err)
		}
	}

	// The API port was free when picked, but another process may bind it
	// before QEMU does: QEMU then exits at once, and a new port is tried.
	for attempt := 1; ; attempt++ {
		err := vm.startQEMU(ctx)
		if err == nil {
			break
		}

		if vm.spec.APIPort != 0 || attempt >= 5 || !strings.Contains(vm.qemuLogTail(), "host forwarding rule") {
			return err
		}

		vm.log.Info("API port taken before QEMU bound it; retrying", "port", vm.apiPort)

		if vm.console != nil {
			vm.console.stop()
		}

		if vm.apiPort, err = pickPort(); err != nil {
			return fmt.Errorf("api port: %w", err)
		}

		vm.exited = make(chan struct{})
	}

	vm.log.Info("vm started", "accel", vm.accel, "api", vm.APIEndpoint(), "console", vm.ConsolePath())

	return nil
}

// startQEMU starts QEMU and connects to its monitor.
func (vm *VM) startQEMU(ctx context.Context) error {
	consolePath := vm.ConsolePath()
	if err := os.WriteFile(consolePath, nil, 0o644); err != nil {
		return err
	}

	qlog, err := os.Create(filepath.Join(vm.workDir, "qemu.log"))
	if err != nil {
		return err
	}
	defer qlog.Close() //nolint:errcheck

	args := vm.qemuArgs()
	vm.log.Debug("starting qemu", "args", strings.Join(args, " "))

	vm.qemu = exec.Command("qemu-system-x86_64", args...) //nolint:gosec
	vm.qemu.Stdout = qlog
	vm.qemu.Stderr = qlog
	vm.qemu.SysProcAttr = vm.procAttr()

	vm.started = time.Now()
	if err := vm.qemu.Start(); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}

	go func() {
		vm.exitErr = vm.qemu.Wait()
		close(vm.exited)
	}()

	vm.console = newConsoleTail(consolePath, vm.exited)

	if err := vm.writeInstance(); err != nil {
		return err
	}

	if err := vm.connectQMP(ctx); err != nil {
		return fmt.Errorf("qmp: %w (qemu.log: %s)", err, vm.qemuLogTail())
	}

	return nil
}

func (vm *VM) qemuLogTail() string {
	data, _ := os.ReadFile(filepath.Join(vm.workDir, "qemu.log")) //nolint:errcheck
	s := strings.TrimSpace(string(data))

	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}

	return s
}

// ConsolePath is the file the serial console is written to.
func (vm *VM) ConsolePath() string { return filepath.Join(vm.workDir, "console.log") }

// APIEndpoint is the host address of the guest's node API (127.0.0.1:port).
func (vm *VM) APIEndpoint() string {
	if vm.apiPort == 0 {
		return "" // NoInbound: only the hub reaches the node
	}

	return fmt.Sprintf("127.0.0.1:%d", vm.apiPort)
}

// WorkDir holds the VM's files (console.log, qemu.log, vars copy, overlay).
func (vm *VM) WorkDir() string { return vm.workDir }

// DiskPath is the image the guest writes to (the overlay or the caller's disk).
func (vm *VM) DiskPath() string { return vm.diskPath }

// VarsPath is the UEFI variable store the firmware writes to.
func (vm *VM) VarsPath() string { return vm.varsPath }

// TPMStateDir is the swtpm state directory ("" without TPM).
func (vm *VM) TPMStateDir() string { return vm.tpmDir }

// Accel is the accelerator QEMU runs with (tcg or kvm).
func (vm *VM) Accel() string { return vm.accel }

// StartedAt is when QEMU was started; boot times are measured from it.
func (vm *VM) StartedAt() time.Time { return vm.started }

// PID is QEMU's process id.
func (vm *VM) PID() int {
	if vm.qemu == nil || vm.qemu.Process == nil {
		return 0
	}

	return vm.qemu.Process.Pid
}

// Exited is closed when QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Wait waits for QEMU to exit (the guest powered off, or Kill) and returns
// its exit error, if any.
func (vm *VM) Wait(ctx context.Context) error {
	ctx, cancel := vm.withTimeout(ctx)
	defer cancel()

	select {
	case <-vm.exited:
		return vm.exitErr
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s to exit: %w", vm.spec.Name, ctx.Err())
	}
}

func (vm *VM) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}

	return context.WithTimeout(ctx, vm.spec.WaitTimeout)
}

// Kill stops QEMU at once (SIGKILL), like pulling the power cord.
func (vm *VM) Kill() error {
	if vm.qemu == nil || vm.qemu.Process == nil {
		return nil
	}

	select {
	case <-vm.exited:
		return nil
	default:
	}

	if err := vm.qemu.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s: %w", vm.spec.Name, err)
	}

	<-vm.exited

	return nil
}

// Close stops every process the VM started (unless it was started with
// Detach), disconnects QMP, and removes sockets, pid files and a temporary
// work dir. It is safe to call more than once.
func (vm *VM) Close() error {
	vm.closeOnce.Do(func() {
		var errs []error

		vm.qmpMu.Lock()
		if vm.mon != nil {
			vm.mon.Disconnect() //nolint:errcheck
			vm.mon = nil
		}
		vm.qmpMu.Unlock()

		if vm.console != nil {
			vm.console.stop()
		}

		if !vm.spec.Detach {
			errs = append(errs, vm.Kill())

			if vm.swtpm != nil && vm.swtpm.Process != nil {
				vm.swtpm.Process.Kill() //nolint:errcheck
				<-vm.swtpmExited
			}

			if vm.sockDir != "" {
				errs = append(errs, os.RemoveAll(vm.sockDir))
			}

			if vm.ownsWork {
				errs = append(errs, os.RemoveAll(vm.workDir))
			} else if vm.workDir != "" {
				for _, f := range []string{"qemu.pid", "swtpm.pid", instanceFile} {
					if err := os.Remove(filepath.Join(vm.workDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
						errs = append(errs, err)
					}
				}
			}
		}

		vm.slot.release()
		vm.slot = nil

		vm.closeErr = errors.Join(errs...)
	})

	return vm.closeErr
}
