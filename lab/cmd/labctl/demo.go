package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/harness"
)

func init() { commands = append(commands, newDemoCommand) }

func newDemoCommand(g *globals) *cobra.Command {
	o := &upOptions{}

	cmd := &cobra.Command{
		Use:   "demo DISK-IMAGE",
		Short: "Boot a lab image twice as a new machine: enroll, seal, reboot, unlock",
		Long: `demo plays a new machine's first two boots:

  1. empty UEFI vars (Setup Mode): systemd-boot enrolls PK/KEK/db from the
     ESP and resets; the UKI then boots under enforced Secure Boot, labos
     checks that Secure Boot is enforced with our db certificate, creates
     STATE, seals its key to the TPM (PCR 11 policy + PCR 7), and waits in
     maintenance mode until demo delivers the machine config (--keys or
     --config), which the node keeps on STATE;
  2. the same machine (vars, TPM, disk) boots again: STATE unlocks from the
     TPM and the node runs on the config it kept.

It prints a short summary and stops the VM. Exit code 0 only if both boots
are healthy with Secure Boot on, Setup Mode off and the TPM unlocked.`,
		Example: `  make images && labctl demo _out/labos/disk.raw --keys _out/keys`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), g, o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}

	f := cmd.Flags()
	f.StringVar(&o.name, "name", "demo", "VM name (its state is wiped first)")
	f.StringVar(&o.talosconfig, "talosconfig", "", "also check the node API with this talosconfig")
	o.config.flags(f)
	f.DurationVar(&o.timeout, "timeout", 4*time.Minute, "per-boot wait for the status marker")
	f.BoolVar(&o.verbose, "verbose", false, "copy the serial console to stderr")

	return cmd
}

type demoBoot struct {
	Boot   string     `json:"boot"`
	Result *upResult  `json:"result"`
	Checks []demoFact `json:"checks"`
}

type demoFact struct {
	What string `json:"what"`
	OK   bool   `json:"ok"`
}

func runDemo(ctx context.Context, g *globals, o *upOptions, disk string, stdout, stderr io.Writer) error {
	o.vars, o.memory, o.accel = "empty", 1024, harness.AccelTCG
	start := time.Now()

	if o.config.file == "" && o.config.keys == "" {
		return usageErr("demo delivers the node's machine config after its first boot: give --keys DIR (e.g. _out/keys) or --config FILE")
	}

	var (
		boots  []demoBoot
		failed bool
	)

	for i, phase := range []string{"first boot (enroll keys, seal STATE)", "second boot (unlock STATE from the TPM)"} {
		o.fresh = i == 0

		if g.output == "text" {
			fmt.Fprintf(stderr, "== %s\n", phase)
		}

		res, err := bootNode(ctx, g, o, disk, stderr)
		if err != nil {
			return err
		}

		facts := []demoFact{
			{"secure boot enabled", res.SecureBoot},
			{"setup mode off", !res.SetupMode},
			{"TPM unlocked STATE", res.TPMUnlocked},
			{"healthy", res.Healthy},
		}

		if i == 0 {
			facts = append(facts,
				demoFact{"systemd-boot enrolled keys and reset (2 firmware boots)", res.FirmwareBoots >= 2},
				demoFact{"STATE created and sealed on this boot", res.Status.StateFormatted},
				demoFact{"machine config delivered in maintenance mode, kept on STATE", res.Status.Configured})
		} else {
			facts = append(facts,
				demoFact{"STATE reused, not re-created", !res.Status.StateFormatted},
				demoFact{"machine config read back from STATE", res.Status.Configured})
		}

		if res.APICheck != "" {
			facts = append(facts, demoFact{"node API (Version, COSI) says running and ready over mTLS", res.APICheck == "ok"})
		}

		for _, f := range facts {
			failed = failed || !f.OK
		}

		boots = append(boots, demoBoot{Boot: phase, Result: res, Checks: facts})
	}

	if g.output == "json" {
		if err := writeJSON(stdout, map[string]any{"boots": boots, "ok": !failed, "seconds": time.Since(start).Seconds()}); err != nil {
			return err
		}
	} else {
		for _, b := range boots {
			fmt.Fprintf(stdout, "%s: version %s, %.1f s to status\n", b.Boot, b.Result.Version, b.Result.BootSeconds)

			for _, f := range b.Checks {
				mark := "ok  "
				if !f.OK {
					mark = "FAIL"
				}

				fmt.Fprintf(stdout, "  [%s] %s\n", mark, f.What)
			}
		}

		fmt.Fprintf(stdout, "demo took %.0f s\n", time.Since(start).Seconds())
	}

	if failed {
		return withCode(exitUnhealthy, fmt.Errorf("demo: some checks failed (console: %s)", boots[len(boots)-1].Result.Console))
	}

	return nil
}
