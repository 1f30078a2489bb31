package main

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/harness"
)

func init() { commands = append(commands, newConsoleCommand) }

func newConsoleCommand(g *globals) *cobra.Command {
	var follow bool

	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Print a VM's serial console",
		Long: `console prints the serial console log of VM NAME (its console.log in the
state dir). With --follow it keeps printing new output while the VM runs,
like tail -f; Ctrl-C stops following, not the VM.`,
		Example: `  labctl console labos
  labctl console labos --follow`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runConsole(cmd.Context(), g, args[0], follow, cmd.OutOrStdout())
		},
	}

	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing while the VM runs")

	return cmd
}

func runConsole(ctx context.Context, g *globals, name string, follow bool, w io.Writer) error {
	dir := harness.NodeDir(g.stateRoot, name)

	f, err := os.Open(dir + "/console.log")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return usageErr("no VM %q in %s", name, g.stateRoot)
		}

		return err
	}
	defer f.Close() //nolint:errcheck

	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}

		if !follow {
			return nil
		}

		inst, err := harness.LoadInstance(dir)
		if err != nil || !inst.Running() {
			_, err := io.Copy(w, f)

			return err
		}

		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
