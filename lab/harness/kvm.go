package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

var (
	kvmOnce sync.Once
	kvmOK   bool
)

// ProbeKVM reports whether KVM can really run the lab's firmware here. The
// presence of /dev/kvm proves nothing (a paravirtual backend accepts the
// open and then fails OVMF with an emulation error, or refuses smm=on), so
// it boots the Secure Boot OVMF with KVM and looks for the boot manager on
// the console. The answer is cached for the process.
func ProbeKVM(ctx context.Context) bool {
	kvmOnce.Do(func() { kvmOK = probeKVM(ctx) })

	return kvmOK
}

func probeKVM(ctx context.Context) bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}

	dir, err := os.MkdirTemp("", "kvmprobe-")
	if err != nil {
		return false
	}
	defer os.RemoveAll(dir) //nolint:errcheck

	vars := filepath.Join(dir, "vars.fd")
	if copyFile(OVMFVarsEmpty, vars, 0o644) != nil {
		return false
	}

	console := filepath.Join(dir, "console")

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-nodefaults", "-display", "none",
		"-accel", "kvm", "-cpu", "host", "-machine", "q35,smm=on",
		"-global", "driver=cfi.pflash01,property=secure,value=on",
		"-global", "ICH9-LPC.disable_s3=1", "-m", "256",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file="+vars,
		"-serial", "file:"+console)
	if cmd.Start() != nil {
		return false
	}

	done := make(chan struct{})

	go func() {
		cmd.Wait() //nolint:errcheck
		close(done)
	}()

	defer func() {
		cmd.Process.Kill() //nolint:errcheck
		<-done
	}()

	for {
		// OVMF prints BdsDxe lines once the boot manager runs, which it
		// only reaches when KVM executes the firmware correctly.
		if data, err := os.ReadFile(console); err == nil && strings.Contains(string(data), "BdsDxe") {
			return true
		}

		select {
		case <-done:
			return false
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
}
