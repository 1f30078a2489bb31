package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// swtpmSetupConf points swtpm_setup at a certificate authority inside the
// TPM's own state dir; the packaged default writes to /var/lib/swtpm-localca,
// shared by every TPM on the machine.
func writeSwtpmConfig(stateDir string) (string, error) {
	ca := filepath.Join(stateDir, "localca")
	if err := os.MkdirAll(ca, 0o700); err != nil {
		return "", err
	}

	files := map[string]string{
		"swtpm-localca.conf":    fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca),
		"swtpm-localca.options": "--platform-manufacturer labfleet\n--platform-version 2.1\n--platform-model QEMU\n",
	}

	files["swtpm_setup.conf"] = fmt.Sprintf("create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
		filepath.Join(ca, "swtpm-localca.conf"), filepath.Join(ca, "swtpm-localca.options"))

	for name, content := range files {
		if err := os.WriteFile(filepath.Join(ca, name), []byte(content), 0o600); err != nil {
			return "", err
		}
	}

	return filepath.Join(ca, "swtpm_setup.conf"), nil
}

// provisionTPM manufactures a TPM in stateDir unless it holds one already:
// EK and its certificate, and only the sha256 PCR bank (every extra bank
// costs firmware and stub time under TCG).
func provisionTPM(ctx context.Context, stateDir string) error {
	if _, err := os.Stat(filepath.Join(stateDir, "tpm2-00.permall")); err == nil {
		return nil
	}

	conf, err := writeSwtpmConfig(stateDir)
	if err != nil {
		return err
	}

	cmd := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", stateDir,
		"--createek", "--create-ek-cert", "--create-platform-cert", "--lock-nvram",
		"--pcr-banks", "sha256", "--config", conf)

	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("swtpm_setup: %w: %s", err, strings.TrimSpace(string(out)))
	}

	return nil
}

func (vm *VM) startSwtpm(ctx context.Context) error {
	vm.tpmDir = vm.spec.TPMStateDir
	if vm.tpmDir == "" {
		vm.tpmDir = filepath.Join(vm.workDir, "tpm")
	}

	if err := os.MkdirAll(vm.tpmDir, 0o700); err != nil {
		return err
	}

	if err := provisionTPM(ctx, vm.tpmDir); err != nil {
		return err
	}

	// --terminate: swtpm exits when QEMU closes the control channel, so a
	// VM that dies leaves no TPM behind either.
	vm.swtpm = exec.Command("swtpm", "socket", "--tpm2", //nolint:gosec
		"--tpmstate", "dir="+vm.tpmDir,
		"--ctrl", "type=unixio,path="+vm.tpmSocket(),
		"--pid", "file="+filepath.Join(vm.workDir, "swtpm.pid"),
		"--log", "file="+filepath.Join(vm.workDir, "swtpm.log")+",level=1",
		"--terminate")
	vm.swtpm.SysProcAttr = vm.procAttr()

	if err := vm.swtpm.Start(); err != nil {
		return err
	}

	done := make(chan error, 1)
	vm.swtpmExited = make(chan struct{})

	go func() {
		done <- vm.swtpm.Wait()
		close(vm.swtpmExited)
	}()

	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()

	for {
		if _, err := os.Stat(vm.tpmSocket()); err == nil {
			return nil
		}

		select {
		case err := <-done:
			return fmt.Errorf("swtpm exited at start: %v (see %s)", err, filepath.Join(vm.workDir, "swtpm.log"))
		case <-deadline.C:
			return errors.New("swtpm socket did not appear within 10s")
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// TPMAlive reports whether the VM's swtpm still runs (false when the VM
// has no TPM or swtpm exited).
func (vm *VM) TPMAlive() bool {
	if vm.swtpmExited == nil {
		return false
	}

	select {
	case <-vm.swtpmExited:
		return false
	default:
		return true
	}
}
