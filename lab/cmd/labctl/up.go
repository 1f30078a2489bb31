package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/harness"
	"github.com/labfleet/labfleet/lab/nodeapi"
	"github.com/labfleet/labfleet/lab/nodeapi/nodestate"
)

func init() { commands = append(commands, newUpCommand) }

type upOptions struct {
	name        string
	vars        string
	tpmState    string
	noTPM       bool
	fresh       bool
	inPlace     bool
	detach      bool
	talosconfig string
	timeout     time.Duration
	memory      int
	accel       string
	registry    int
	verbose     bool
	until       string
	config      configOptions
	hubPort     int
	uuid        string
}

func newUpCommand(g *globals) *cobra.Command {
	o := &upOptions{}

	cmd := &cobra.Command{
		Use:   "up DISK-IMAGE",
		Short: "Boot a lab disk image and report how it came up",
		Long: `up boots DISK-IMAGE under OVMF Secure Boot with a TPM, waits for labos's
status marker and reports secureBoot, setupMode, tpmUnlocked, version,
healthy, bootSeconds and the node API endpoint.

With empty vars (the default on a new node) systemd-boot enrolls the keys
from the ESP and resets; the next boot runs enforced. Images carry no
machine config: on its first boot the node creates and seals STATE, then
waits in Talos's maintenance mode until up delivers the config given by
--config or generated from --keys (as 'talosctl apply-config --insecure'
does); the node keeps it on STATE for later boots. The node's state
(disk overlay, vars, TPM) stays in <state-dir>/<name>, so a second 'up' of
the same name reboots the same machine: keys enrolled, STATE sealed.

Without --detach the VM is stopped once it has reported; with --detach it
keeps running for 'labctl console', 'labctl ps' and 'labctl down'.`,
		Example: `  # First boot: enroll keys, seal STATE, deliver the config, report, stop.
  labctl up _out/labos/disk.raw --keys _out/keys

  # Same machine again: unlock STATE from the TPM.
  labctl up _out/labos/disk.raw -o json

  # Keep it running and talk to its API.
  labctl up _out/labos/disk.raw --detach --talosconfig _out/keys/talosconfig
  labctl console labos --follow
  labctl down labos`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runUp(cmd.Context(), g, o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}

	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "VM name (default: the image file name without extension)")
	f.StringVar(&o.vars, "vars", "empty", "UEFI vars: empty (Setup Mode, systemd-boot enrolls), ms, or a vars file used in place")
	f.StringVar(&o.tpmState, "tpm-state", "", "swtpm state directory (default <state-dir>/<name>/tpm)")
	f.BoolVar(&o.noTPM, "no-tpm", false, "boot without a TPM")
	f.BoolVar(&o.fresh, "fresh", false, "wipe the VM's state first: a new machine")
	f.BoolVar(&o.inPlace, "in-place", false, "write to DISK-IMAGE itself instead of an overlay")
	f.BoolVar(&o.detach, "detach", false, "leave the VM running after reporting")
	f.StringVar(&o.talosconfig, "talosconfig", "", "talosconfig to read the node's state through its Talos API with (Version and COSI resources over mTLS)")
	f.DurationVar(&o.timeout, "timeout", 6*time.Minute, "how long to wait for the status marker")
	f.IntVar(&o.memory, "memory", 1024, "guest memory in MiB")
	f.StringVar(&o.accel, "accel", harness.AccelTCG, "accelerator: tcg, kvm, or auto (kvm only if a probe boots)")
	f.IntVar(&o.registry, "registry-port", 0, "host 127.0.0.1 port the guest reaches as 10.0.2.100:5000 (0: none)")
	f.BoolVar(&o.verbose, "verbose", false, "copy the serial console to stderr while booting")
	o.config.flags(f)
	f.StringVar(&o.until, "until", "", "wait for this labos marker instead of the status (e.g. init for the trivial baseline); reports only bootSeconds")
	f.IntVar(&o.hubPort, "hub-port", 0, "behind a firewall: forward nothing into the guest; its only way out is this host 127.0.0.1 port (the fleet hub's API), which its image's SideroLink settings name; the hub delivers its config")
	f.StringVar(&o.uuid, "uuid", "", "the machine's SMBIOS UUID (the hub knows machines by it; default: QEMU's)")

	return cmd
}

// upResult is what up prints.
type upResult struct {
	*harness.BootReport
	Detached bool   `json:"detached"`
	StateDir string `json:"stateDir"`
	APICheck string `json:"apiCheck,omitempty"` // "ok" or the error
	// Node is the node's state as its Talos API reports it (with --talosconfig).
	Node *nodestate.State `json:"node,omitempty"`
}

func runUp(ctx context.Context, g *globals, o *upOptions, disk string, stdout, stderr io.Writer) error {
	res, err := bootNode(ctx, g, o, disk, stderr)
	if err != nil {
		return err
	}

	if err := printUp(g.output, stdout, *res); err != nil {
		return err
	}

	return verdict(o, res)
}

// verdict maps a boot report to the exit code contract.
func verdict(o *upOptions, res *upResult) error {
	switch {
	case o.until != "" && o.until != nodeapi.MarkerStatus:
		return nil // only timing was asked for
	case !res.Healthy || !res.TPMUnlocked && !o.noTPM:
		return withCode(exitUnhealthy, fmt.Errorf("%s is unhealthy (healthy=%t tpmUnlocked=%t%s)", res.Name, res.Healthy, res.TPMUnlocked, reason(res.UnlockError)))
	case res.APICheck != "" && res.APICheck != "ok" && !strings.HasPrefix(res.APICheck, "skipped") && res.Healthy:
		return fmt.Errorf("node API at %s: %s", res.APIEndpoint, res.APICheck)
	}

	return nil
}

// bootNode boots the node, waits for its status, checks the API if asked
// and, unless detached, stops it again.
func bootNode(ctx context.Context, g *globals, o *upOptions, disk string, stderr io.Writer) (*upResult, error) {
	if o.name == "" {
		base := filepath.Base(disk)
		o.name = strings.TrimSuffix(base, filepath.Ext(base))
	}

	if _, err := os.Stat(disk); err != nil {
		return nil, usageErr("disk image: %v", err)
	}

	if o.talosconfig != "" {
		if _, err := os.Stat(o.talosconfig); err != nil {
			return nil, usageErr("--talosconfig: %v", err)
		}
	}

	if o.noTPM && o.tpmState != "" {
		return nil, usageErr("--tpm-state and --no-tpm exclude each other")
	}

	machineConfig, err := o.config.load()
	if err != nil {
		return nil, err
	}

	if o.hubPort != 0 && (machineConfig != nil || o.registry != 0) {
		return nil, usageErr("--hub-port: nothing reaches the guest but the hub, which delivers its config and images; drop --keys/--config/--registry-port")
	}

	spec, err := harness.PrepareNode(ctx, harness.NodeOptions{
		Name: o.name, StateRoot: g.stateRoot, Disk: disk, DiskInPlace: o.inPlace,
		Vars: o.vars, TPM: !o.noTPM, TPMStateDir: o.tpmState, Fresh: o.fresh, Detach: o.detach,
		RegistryPort: o.registry, MemoryMiB: o.memory, Accel: o.accel, WaitTimeout: o.timeout,
		MachineConfig: machineConfig, NoInbound: o.hubPort != 0, HubPort: o.hubPort, UUID: o.uuid,
	})
	if err != nil {
		if errors.Is(err, harness.ErrRunning) {
			return nil, withCode(exitUsage, err)
		}

		return nil, err
	}

	vm, err := harness.StartWithLogger(ctx, spec, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	defer vm.Close() //nolint:errcheck

	if o.verbose {
		vm.TeeConsole(stderr)
	}

	if g.output == "text" {
		fmt.Fprintf(stderr, "booting %s (accel %s, console %s)\n", o.name, vm.Accel(), vm.ConsolePath())
	}

	waitCtx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	var report *harness.BootReport
	if o.until != "" && o.until != nodeapi.MarkerStatus {
		report, err = vm.WaitBootMarker(waitCtx, o.until)
	} else {
		report, err = vm.WaitBoot(waitCtx)
	}

	if err != nil {
		vm.Kill() //nolint:errcheck

		return nil, withCode(exitNoBoot, fmt.Errorf("%s did not report its status: %w", o.name, err))
	}

	res := &upResult{BootReport: report, Detached: o.detach, StateDir: vm.WorkDir()}

	switch {
	case o.talosconfig == "" || report.Marker != nodeapi.MarkerStatus:
	case o.hubPort != 0:
		res.APICheck = "skipped: no inbound port (the node's API is reached through the hub: fleetctl machines show)"
	case !report.Healthy:
		// labos reboots an unhealthy unblessed entry; its API would vanish
		// mid-check.
		res.APICheck = "skipped: node unhealthy"
	default:
		res.APICheck = "ok"

		st, err := checkAPI(waitCtx, o.talosconfig, report.APIEndpoint)
		if err != nil {
			res.APICheck = err.Error()
		}

		res.Node = st
	}

	if !o.detach {
		stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		// labos writes nothing after its status; a short grace for an
		// ACPI power-off, then QMP quit.
		vm.Shutdown(stopCtx, 3*time.Second) //nolint:errcheck
	}

	return res, nil
}

func reason(s string) string {
	if s == "" {
		return ""
	}

	return ", " + s
}

func printUp(output string, w io.Writer, r upResult) error {
	if output == "json" {
		return writeJSON(w, r)
	}

	fmt.Fprintf(w, "name:         %s\n", r.Name)

	if r.Marker != nodeapi.MarkerStatus {
		fmt.Fprintf(w, "marker:       %s\n", r.Marker)
		fmt.Fprintf(w, "bootSeconds:  %.1f (firmware boots: %d)\n", r.BootSeconds, r.FirmwareBoots)

		if len(r.Phases) > 0 {
			fmt.Fprintf(w, "phases:       %s\n", phaseLine(r.Phases))
		}

		return nil
	}

	fmt.Fprintf(w, "version:      %s\n", r.Version)
	fmt.Fprintf(w, "secureBoot:   %t\n", r.SecureBoot)
	fmt.Fprintf(w, "setupMode:    %t\n", r.SetupMode)
	fmt.Fprintf(w, "tpmUnlocked:  %t%s\n", r.TPMUnlocked, reason(r.UnlockError))
	fmt.Fprintf(w, "healthy:      %t\n", r.Healthy)
	fmt.Fprintf(w, "bootSeconds:  %.1f (init at %.1f, firmware boots: %d)\n", r.BootSeconds, r.InitSeconds, r.FirmwareBoots)

	if len(r.Phases) > 0 {
		fmt.Fprintf(w, "phases:       %s\n", phaseLine(r.Phases))
	}
	fmt.Fprintf(w, "bootEntry:    %s\n", r.BootEntry)
	fmt.Fprintf(w, "apiEndpoint:  %s\n", r.APIEndpoint)

	if r.APICheck != "" {
		fmt.Fprintf(w, "apiCheck:     %s\n", r.APICheck)
	}

	if n := r.Node; n != nil {
		fmt.Fprintf(w, "node (API):   Talos %s, image %s, stage %s, ready %t, secureBoot %t, STATE %s (encrypted %t), entry %s\n",
			n.TalosVersion, n.ImageVersion, n.Stage, n.Ready, n.SecureBoot, n.StatePhase, n.StateEncrypted, n.BootEntry)
	}

	fmt.Fprintf(w, "state:        %s (detached: %t)\n", r.StateDir, r.Detached)

	return nil
}
