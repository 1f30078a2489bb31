package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/labbase"
)

// Exit codes, the one place errors become them.
const (
	exitOK        = 0
	exitFailure   = 1 // runtime failure (QEMU, build, I/O)
	exitUsage     = 2 // bad flags or arguments
	exitNoBoot    = 3 // the VM never reported its status (timeout, crash, refused image)
	exitUnhealthy = 4 // booted, but labos reports unhealthy or the TPM did not unlock
)

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}

	return &exitError{code: code, err: err}
}

func usageErr(format string, args ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, args...))
}

func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}

	return exitFailure
}

// commands is filled by the verb files' init functions, one verb per file.
var commands []func(*globals) *cobra.Command

type globals struct {
	output    string
	stateRoot string
}

func newRootCommand() *cobra.Command {
	g := &globals{}

	root := &cobra.Command{
		Use:   "labctl",
		Short: "Build the lab base and boot lab images under Secure Boot + TPM",
		Long: `labctl boots lab disk images on emulated hardware: QEMU (TCG), OVMF with
Secure Boot, a swtpm TPM 2.0, and a user-mode NIC that reaches nothing but
the node API forwarded to 127.0.0.1. It also builds the lab base (the Debian
kernel + labos initramfs in Talos's imager layout) that imagectl consumes.

Each VM keeps its state (disk overlay, UEFI vars, TPM, console.log) in
<state-dir>/<name>, so booting the same name again is a reboot of the same
machine.

Exit codes:
  0  success (for up: healthy, TPM unlocked)
  1  runtime failure (QEMU, build, I/O)
  2  bad flags or arguments
  3  the VM never reported its status (timeout, crash, refused image)
  4  the VM booted but is unhealthy or its TPM did not unlock`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if g.output != "text" && g.output != "json" {
				return usageErr("-o %q: allowed values are text and json", g.output)
			}

			if g.stateRoot == "" {
				repo, err := labbase.FindRepoDir()
				if err != nil {
					repo = "."
				}

				g.stateRoot = filepath.Join(repo, "_out", "lab", "vms")
			}

			return nil
		},
	}

	root.PersistentFlags().StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	root.PersistentFlags().StringVar(&g.stateRoot, "state-dir", "", "directory of per-VM state (default <repo>/_out/lab/vms)")

	for _, c := range commands {
		root.AddCommand(c(g))
	}

	return root
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")

	return enc.Encode(v)
}

// exactArgs is cobra.ExactArgs with the usage exit code.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErr("%s takes %d argument(s), got %d (see --help)", cmd.CommandPath(), n, len(args))
		}

		return nil
	}
}
