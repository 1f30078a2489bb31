package harness

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"
)

// Firmware files from Debian's ovmf package.
const (
	OVMFCode      = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	OVMFVarsEmpty = "/usr/share/OVMF/OVMF_VARS_4M.fd"    // no keys: Setup Mode
	OVMFVarsMS    = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd" // Microsoft keys enrolled
)

// Accelerators.
const (
	AccelTCG  = "tcg"  // always works; the default
	AccelKVM  = "kvm"  // forced; fails if KVM cannot boot OVMF here
	AccelAuto = "auto" // KVM if ProbeKVM boots firmware with it, else TCG
)

// DiskCacheDirectSync is QEMU's cache=directsync (O_DIRECT + O_DSYNC).
const DiskCacheDirectSync = "directsync"

// Spec describes one VM.
type Spec struct {
	// Name labels the VM in errors and logs. Default "vm".
	Name string
	// Disk is the raw (or qcow2) disk image, attached as virtio-blk.
	Disk string
	// DiskInPlace boots Disk itself, keeping what the guest writes (a
	// second boot of the same disk). Otherwise the guest writes to a qcow2
	// overlay in the work dir and Disk is left untouched.
	DiskInPlace bool
	// Vars is the UEFI variable store: "" or "empty" for an empty store
	// (Setup Mode, systemd-boot enrolls keys), "ms" for Microsoft keys, or
	// a file path.
	Vars string
	// VarsInPlace uses the Vars file itself (enrolled keys and boot
	// counting variables persist across VM runs). Otherwise a per-VM copy
	// is used. Ignored for "empty" and "ms".
	VarsInPlace bool
	// Code is the firmware code file. Default OVMFCode (Secure Boot with
	// SMM). Note: every Debian OVMF build is Secure Boot capable; Secure
	// Boot is off only while the vars hold no PK (Setup Mode).
	Code string
	// TPM attaches a swtpm TPM 2.0 (sha256 PCR bank only).
	TPM bool
	// TPMStateDir keeps the TPM's state across VM runs; it is provisioned
	// with swtpm_setup if empty. Default: a directory in the work dir.
	TPMStateDir string
	// MemoryMiB is the guest RAM. Default 1024.
	MemoryMiB int
	// CPUs is the vCPU count. Default 1 (more gave no gain under TCG).
	CPUs int
	// Accel is AccelTCG (default), AccelKVM or AccelAuto.
	Accel string
	// DiskCache is QEMU's cache mode for the disk. Default
	// DiskCacheDirectSync: every guest write reaches the disk file before
	// it completes, so a killed QEMU (a power cut) loses exactly what a
	// real disk without a flush would, not what the host's page cache held.
	DiskCache string
	// MachineConfig is delivered when the node waits in maintenance mode
	// (its first boot: images carry no machine config), the way
	// `talosctl apply-config --insecure` does. Empty: waits for a status
	// fail with a clear error when the node asks for a config.
	MachineConfig []byte
	// RegistryPort is a host port on 127.0.0.1 the guest reaches as
	// nodeapi.GuestRegistryAddr; 0 opens nothing.
	RegistryPort int
	// APIPort is the host port forwarded to the guest's node API; 0 picks a
	// free one.
	APIPort int
	// NoInbound forwards nothing into the guest (no hostfwd): a node
	// behind a hospital firewall. Only the fleet hub (HubPort) reaches it,
	// through the SideroLink tunnel the node opens; the harness delivers
	// no MachineConfig (the hub does) and APIEndpoint is empty.
	NoInbound bool
	// HubPort is a host port on 127.0.0.1 (the hub's provisioning API) the
	// guest reaches as GuestHubAddr, by TCP only; 0 opens nothing.
	HubPort int
	// UUID is the machine's SMBIOS UUID (QEMU -uuid); empty: QEMU's default.
	UUID string
	// WorkDir holds console.log, qemu.log, the vars copy, the disk overlay
	// and instance.json. Default: a temporary directory removed by Close;
	// a given WorkDir is kept (only sockets and pid files go).
	WorkDir string
	// Detach starts QEMU and swtpm in their own session so they outlive
	// this process (labctl up --detach); Close then leaves them running.
	Detach bool
	// WaitTimeout bounds every wait whose context has no deadline. Default 5m.
	WaitTimeout time.Duration
	// ExtraArgs are appended to QEMU's command line.
	ExtraArgs []string
}

var uuidRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// Validate checks the spec and names the offending field.
func (s *Spec) Validate() error {
	if s.Disk == "" {
		return errors.New("spec: Disk is required")
	}

	if _, err := os.Stat(s.Disk); err != nil {
		return fmt.Errorf("spec: Disk: %w", err)
	}

	switch s.Vars {
	case "", "empty", "ms":
	default:
		if _, err := os.Stat(s.Vars); err != nil {
			return fmt.Errorf("spec: Vars: %w (allowed: empty, ms or a file)", err)
		}
	}

	switch s.Accel {
	case "", AccelTCG, AccelKVM, AccelAuto:
	default:
		return fmt.Errorf("spec: Accel %q: allowed are %s, %s, %s", s.Accel, AccelTCG, AccelKVM, AccelAuto)
	}

	if s.MemoryMiB < 0 || s.CPUs < 0 || s.RegistryPort < 0 || s.RegistryPort > 65535 || s.APIPort < 0 || s.APIPort > 65535 {
		return errors.New("spec: MemoryMiB, CPUs and ports must not be negative (ports at most 65535)")
	}

	if s.HubPort < 0 || s.HubPort > 65535 {
		return fmt.Errorf("spec: HubPort %d is not a port (0-65535)", s.HubPort)
	}

	if s.NoInbound && len(s.MachineConfig) > 0 {
		return errors.New("spec: MachineConfig is set with NoInbound: nothing can reach the guest to deliver it; the hub delivers it through the tunnel")
	}

	if s.NoInbound && s.APIPort != 0 {
		return errors.New("spec: APIPort is set with NoInbound: there is no inbound forward")
	}

	if s.UUID != "" && !uuidRe.MatchString(s.UUID) {
		return fmt.Errorf("spec: UUID %q is not a UUID (8-4-4-4-12 hex digits)", s.UUID)
	}

	if s.TPMStateDir != "" && !s.TPM {
		return errors.New("spec: TPMStateDir is set but TPM is off")
	}

	return nil
}

func (s *Spec) setDefaults() {
	if s.Name == "" {
		s.Name = "vm"
	}

	if s.MemoryMiB == 0 {
		s.MemoryMiB = 1024
	}

	if s.CPUs == 0 {
		s.CPUs = 1
	}

	if s.Accel == "" {
		s.Accel = AccelTCG
	}

	if s.Code == "" {
		s.Code = OVMFCode
	}

	if s.WaitTimeout == 0 {
		s.WaitTimeout = 5 * time.Minute
	}

	if s.DiskCache == "" {
		s.DiskCache = DiskCacheDirectSync
	}
}
