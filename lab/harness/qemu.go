package harness

import (
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// GuestHubAddr is where a guest reaches the fleet hub's provisioning API
// (Spec.HubPort); images for such guests carry
// siderolink.api=grpc://GuestHubAddr?...&grpc_tunnel=true (TCP only: the
// guestfwd carries no UDP).
const GuestHubAddr = "10.0.2.101:8099"

func (vm *VM) qmpSocket() string { return filepath.Join(vm.sockDir, "qmp") }
func (vm *VM) tpmSocket() string { return filepath.Join(vm.sockDir, "tpm") }

// netdevArg builds the user-mode NIC: restrict=on cuts the guest off from
// every address but the forwards below, so a test can only reach what it
// opened on 127.0.0.1.
// apiPort 0 forwards nothing inwards (Spec.NoInbound); hubPort opens the
// one outward path to the fleet hub.
func netdevArg(apiPort, registryPort, hubPort int) string {
	s := "user,id=n0,restrict=on"

	if apiPort > 0 {
		s += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", apiPort, nodeapi.APIPort)
	}

	if hubPort > 0 {
		host, port := splitHostPort(GuestHubAddr)
		// per connection, as for the registry: the node dials the API
		// again for every provisioning call and relay stream
		s += fmt.Sprintf(",guestfwd=tcp:%s:%s-cmd:socat - TCP:127.0.0.1:%d", host, port, hubPort)
	}

	if registryPort > 0 {
		host, port := splitHostPort(nodeapi.GuestRegistryAddr)
		// A "-tcp:" guestfwd is a single connection QEMU opens at start;
		// the guest's first request (an HTTPS probe) would use it up. The
		// "-cmd:" form runs socat per connection, still only to this port.
		s += fmt.Sprintf(",guestfwd=tcp:%s:%s-cmd:socat - TCP:127.0.0.1:%d", host, port, registryPort)
	}

	return s
}

func splitHostPort(addr string) (string, string) {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[:i], addr[i+1:]
		}
	}

	return addr, ""
}

func (vm *VM) qemuArgs() []string {
	format := "raw"
	if f, err := imageFormat(vm.diskPath); err == nil {
		format = f
	}

	args := []string{
		"-name", vm.spec.Name,
		// Nothing QEMU would add on its own: no default NIC with an iPXE
		// ROM (a refused image would fall through to it and hang), no VGA.
		"-nodefaults", "-no-user-config", "-display", "none",
		"-accel", vm.accel,
		// Secure Boot OVMF needs SMM and a secure pflash; S3 off as the
		// secboot build expects.
		"-machine", "q35,smm=on",
		"-global", "driver=cfi.pflash01,property=secure,value=on",
		"-global", "ICH9-LPC.disable_s3=1",
		"-m", strconv.Itoa(vm.spec.MemoryMiB),
		"-smp", strconv.Itoa(vm.spec.CPUs),
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + vm.spec.Code,
		"-drive", "if=pflash,format=raw,unit=1,file=" + vm.varsPath,
		"-drive", "if=none,id=d0,format=" + format + ",cache=" + vm.spec.DiskCache + ",file=" + vm.diskPath,
		"-device", "virtio-blk-pci,drive=d0,bootindex=0",
		"-netdev", netdevArg(vm.apiPort, vm.spec.RegistryPort, vm.spec.HubPort),
		"-device", "virtio-net-pci,netdev=n0,romfile=",
		"-device", "virtio-rng-pci",
		"-chardev", "file,id=ser0,path=" + vm.ConsolePath(),
		"-serial", "chardev:ser0",
		"-qmp", "unix:" + vm.qmpSocket() + ",server=on,wait=off",
		"-pidfile", filepath.Join(vm.workDir, "qemu.pid"),
	}

	if vm.spec.UUID != "" {
		args = append(args, "-uuid", vm.spec.UUID)
	}

	if vm.accel == AccelKVM {
		args = append(args, "-cpu", "host")
	} else {
		args = append(args, "-cpu", "max")
	}

	if vm.spec.TPM {
		args = append(args,
			"-chardev", "socket,id=chrtpm,path="+vm.tpmSocket(),
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
			"-device", "tpm-tis,tpmdev=tpm0",
		)
	}

	return append(args, vm.spec.ExtraArgs...)
}
