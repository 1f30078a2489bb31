package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// NodeOptions describe a lab node with persistent state: a named directory
// holding its disk overlay, UEFI vars and TPM, so that booting it again is a
// reboot of the same machine (keys stay enrolled, STATE stays sealed).
type NodeOptions struct {
	// Name of the node; its state lives in StateRoot/Name.
	Name string
	// StateRoot holds one directory per node (labctl: _out/lab/vms).
	StateRoot string
	// Disk is the image to boot. Unless DiskInPlace, the node writes to a
	// qcow2 overlay in its state dir, created on first boot.
	Disk string
	// DiskInPlace boots and writes Disk itself.
	DiskInPlace bool
	// Vars: "" or "empty" (Setup Mode: systemd-boot enrolls keys on first
	// boot) or "ms", copied into the state dir on first boot; or a file,
	// used in place.
	Vars string
	// TPM attaches swtpm; TPMStateDir defaults to <state dir>/tpm.
	TPM         bool
	TPMStateDir string
	// Fresh wipes the node's state first (a new machine).
	Fresh bool
	// Detach leaves QEMU and swtpm running after this process exits.
	Detach bool
	// MachineConfig, RegistryPort, MemoryMiB, Accel, WaitTimeout,
	// NoInbound, HubPort, UUID: as in Spec.
	MachineConfig []byte
	RegistryPort  int
	NoInbound     bool
	HubPort       int
	UUID          string
	MemoryMiB     int
	Accel         string
	WaitTimeout   time.Duration
}

// NodeDir is where a node's state lives.
func NodeDir(stateRoot, name string) string { return filepath.Join(stateRoot, name) }

// ErrRunning means the node is already running.
var ErrRunning = errors.New("node already running")

// PrepareNode creates or reuses the node's state dir and returns the Spec
// that boots it.
func PrepareNode(ctx context.Context, o NodeOptions) (Spec, error) {
	if o.Name == "" || strings.ContainsAny(o.Name, "/ ") {
		return Spec{}, fmt.Errorf("node name %q: use letters, digits, '-', '_'", o.Name)
	}

	dir := NodeDir(o.StateRoot, o.Name)

	if inst, err := LoadInstance(dir); err == nil && inst.Running() {
		return Spec{}, fmt.Errorf("%s (pid %d): %w; stop it with labctl down %s", o.Name, inst.QEMUPID, ErrRunning, o.Name)
	}

	if o.Fresh {
		if err := os.RemoveAll(dir); err != nil {
			return Spec{}, err
		}
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Spec{}, err
	}

	spec := Spec{
		Name: o.Name, WorkDir: dir, DiskInPlace: true, TPM: o.TPM, TPMStateDir: o.TPMStateDir,
		Detach: o.Detach, RegistryPort: o.RegistryPort, MemoryMiB: o.MemoryMiB, Accel: o.Accel,
		WaitTimeout: o.WaitTimeout, VarsInPlace: true, MachineConfig: o.MachineConfig,
		NoInbound: o.NoInbound, HubPort: o.HubPort, UUID: o.UUID,
	}

	if o.TPM && spec.TPMStateDir == "" {
		spec.TPMStateDir = filepath.Join(dir, "tpm")
	}

	if o.DiskInPlace {
		spec.Disk = o.Disk
	} else {
		overlay := filepath.Join(dir, "disk.qcow2")
		if err := ensureOverlay(ctx, o.Disk, overlay); err != nil {
			return Spec{}, err
		}

		spec.Disk = overlay
	}

	switch o.Vars {
	case "", "empty", "ms":
		spec.Vars = filepath.Join(dir, "vars.fd")
		if _, err := os.Stat(spec.Vars); err != nil {
			src := OVMFVarsEmpty
			if o.Vars == "ms" {
				src = OVMFVarsMS
			}

			if err := copyFile(src, spec.Vars, 0o644); err != nil {
				return Spec{}, fmt.Errorf("vars: %w", err)
			}
		}
	default:
		spec.Vars = o.Vars
	}

	return spec, spec.Validate()
}

// ensureOverlay creates a qcow2 overlay of base unless one for the same
// base exists (then the node boots with what it wrote last time).
func ensureOverlay(ctx context.Context, base, overlay string) error {
	abs, err := filepath.Abs(base)
	if err != nil {
		return err
	}

	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("disk: %w", err)
	}

	marker := overlay + ".base"

	if prev, err := os.ReadFile(marker); err == nil {
		if _, err := os.Stat(overlay); err == nil {
			if strings.TrimSpace(string(prev)) != abs {
				return fmt.Errorf("node was created from %s, not %s (use --fresh for a new machine)", strings.TrimSpace(string(prev)), abs)
			}

			return nil
		}
	}

	if err := CreateOverlay(ctx, abs, overlay); err != nil {
		return err
	}

	return os.WriteFile(marker, []byte(abs+"\n"), 0o644)
}

// CreateOverlay writes a qcow2 overlay at overlay backed by base (raw or
// qcow2), leaving base untouched by what the guest writes.
func CreateOverlay(ctx context.Context, base, overlay string) error {
	format, err := imageFormat(base)
	if err != nil {
		return err
	}

	_ = os.Remove(overlay)

	out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2",
		"-b", base, "-F", format, overlay).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create overlay: %w: %s", err, strings.TrimSpace(string(out)))
	}

	return nil
}

// BootReport is what a lab node reported about its boot.
type BootReport struct {
	Name        string  `json:"name"`
	Marker      string  `json:"marker"` // the marker waited for (status unless WaitBootMarker)
	APIEndpoint string  `json:"apiEndpoint"`
	Version     string  `json:"version"`
	SecureBoot  bool    `json:"secureBoot"`
	SetupMode   bool    `json:"setupMode"`
	TPMUnlocked bool    `json:"tpmUnlocked"`
	Healthy     bool    `json:"healthy"`
	UnlockError string  `json:"unlockError,omitempty"`
	BootSeconds float64 `json:"bootSeconds"` // QEMU start to the marker
	// InitSeconds is QEMU start to labos's init marker of the same boot:
	// firmware, systemd-boot, stub and kernel; BootSeconds-InitSeconds is labos.
	InitSeconds float64 `json:"initSeconds,omitempty"`
	// FirmwareBoots counts firmware boot-manager starts: 2 when systemd-boot
	// enrolled keys and reset first.
	FirmwareBoots int `json:"firmwareBoots"`
	// Phases is where the boot's time went, from the uptime labos prints
	// with each marker: firmware, kernel, then each labos step up to the
	// marker waited for (see Phase). Empty for a labos without uptimes.
	Phases    []Phase        `json:"phases,omitempty"`
	BootEntry string         `json:"bootEntry,omitempty"`
	Accel     string         `json:"accel"`
	Console   string         `json:"console"`
	Status    nodeapi.Status `json:"status"`
}

var firmwareBootRe = regexp.MustCompile(`BdsDxe: loading Boot`)

// WaitBoot waits for the node's labos status marker and reports it. The
// console is consumed up to the marker (see WaitConsole).
func (vm *VM) WaitBoot(ctx context.Context) (*BootReport, error) {
	st, at, err := vm.waitStatusAt(ctx)
	if err != nil {
		return nil, err
	}

	r := &BootReport{
		Name:        vm.spec.Name,
		Marker:      nodeapi.MarkerStatus,
		APIEndpoint: vm.APIEndpoint(),
		Version:     st.Version,
		SecureBoot:  st.SecureBoot,
		SetupMode:   st.SetupMode,
		TPMUnlocked: st.TPMUnlocked,
		Healthy:     st.Healthy,
		UnlockError: st.UnlockError,
		BootSeconds: at.Sub(vm.started).Seconds(),
		BootEntry:   st.BootEntry,
		Accel:       vm.accel,
		Console:     vm.ConsolePath(),
		Status:      st,
	}

	r.FirmwareBoots = vm.firmwareBoots()
	r.InitSeconds = vm.lastInitBefore(at)
	r.Phases = vm.timeline(nodeapi.MarkerStatus, at)

	return r, nil
}

// lastInitBefore finds the init marker of the boot that ended at t.
func (vm *VM) lastInitBefore(t time.Time) float64 {
	c := vm.console
	c.mu.Lock()
	defer c.mu.Unlock()

	for i := len(c.lines) - 1; i >= 0; i-- {
		if c.times[i].After(t) {
			continue
		}

		// the marker may follow the uptime labos prints in front of it
		if m, _, ok := nodeapi.ParseMarker(c.lines[i]); ok && m == nodeapi.MarkerInit {
			return c.times[i].Sub(vm.started).Seconds()
		}
	}

	return 0
}

// WaitBootMarker waits for any labos marker (the trivial baseline prints
// only init and poweroff) and reports the time to it; the status fields
// stay empty.
func (vm *VM) WaitBootMarker(ctx context.Context, marker string) (*BootReport, error) {
	_, at, err := vm.WaitMarkerAt(ctx, marker)
	if err != nil {
		return nil, err
	}

	return &BootReport{
		Name: vm.spec.Name, Marker: marker, APIEndpoint: vm.APIEndpoint(),
		BootSeconds: at.Sub(vm.started).Seconds(), FirmwareBoots: vm.firmwareBoots(),
		Accel: vm.accel, Console: vm.ConsolePath(), Phases: vm.timeline(marker, at),
	}, nil
}

func (vm *VM) firmwareBoots() int {
	n := 0

	for _, l := range vm.Lines() {
		if firmwareBootRe.MatchString(l) {
			n++
		}
	}

	return n
}
