// Command labos is the lab's init: it runs as /init in the initramfs of a
// signed UKI and plays Talos's part (PCR phases, TPM-sealed STATE, machine
// API, boot blessing). See lab/labos/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/labos/node"
	"github.com/labfleet/labfleet/lab/labos/sysinit"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// version is set by the lab base builder (-X main.version=...).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	if err := rootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "labos:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "labos",
		Short: "Init (PID 1) of the labfleet lab image",
		Long: `labos runs as /init in the lab UKI's initramfs. It mounts the system,
loads kernel modules, extends PCR 11 with Talos's boot phases, unlocks (or
on first boot creates) the TPM-sealed LUKS2 STATE volume, serves the Talos
machine API on :50000 with mTLS, checks health and blesses the boot entry.

Kernel command line: labos.version=, labos.name=, labos.inject=health-fail.
It refuses to run unless it is PID 1.`,
		Example:       "  # built into the lab base by lab/labbase; not run by hand\n  labos --version",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Getpid() != 1 {
				return errors.New("must run as PID 1 (/init); refusing to touch this system")
			}

			run(cmd.Context())

			return nil
		},
	}
}

// run never returns: PID 1 exiting panics the kernel. After a fatal error
// it keeps whatever is up (the API) serving and waits.
func run(ctx context.Context) {
	n := node.New(os.Stdout, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))

	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintln(os.Stdout, nodeapi.FormatMarkerAt(sysinit.Uptime(), node.MarkerError, fmt.Sprintf("step=panic err=%q", fmt.Sprint(r))))
			select {}
		}
	}()

	if err := n.Boot(ctx); err != nil {
		fmt.Fprintln(os.Stdout, nodeapi.FormatMarkerAt(sysinit.Uptime(), node.MarkerError, fmt.Sprintf("step=boot err=%q", err.Error())))
	}

	for {
		err := n.Wait(context.Background())
		fmt.Fprintln(os.Stdout, nodeapi.FormatMarkerAt(sysinit.Uptime(), node.MarkerError, fmt.Sprintf("step=reboot err=%q", fmt.Sprint(err))))
	}
}
