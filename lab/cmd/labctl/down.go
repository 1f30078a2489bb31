package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/harness"
)

func init() { commands = append(commands, newDownCommand) }

func newDownCommand(g *globals) *cobra.Command {
	var (
		purge bool
		grace time.Duration
	)

	cmd := &cobra.Command{
		Use:   "down NAME",
		Short: "Stop a VM (and with --purge forget it)",
		Long: `down stops VM NAME: QMP quit, then SIGKILL after --grace; its swtpm
follows. The state (disk overlay, vars, TPM) is kept so 'labctl up' boots
the same machine again, unless --purge removes it.`,
		Example: `  labctl down labos
  labctl down labos --purge`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDown(cmd.Context(), g, args[0], purge, grace, cmd.OutOrStdout())
		},
	}

	cmd.Flags().BoolVar(&purge, "purge", false, "also delete the VM's state dir")
	cmd.Flags().DurationVar(&grace, "grace", 5*time.Second, "wait this long after QMP quit before killing")

	return cmd
}

func runDown(ctx context.Context, g *globals, name string, purge bool, grace time.Duration, w io.Writer) error {
	dir := harness.NodeDir(g.stateRoot, name)

	if _, err := os.Stat(dir); err != nil {
		return usageErr("no VM %q in %s", name, g.stateRoot)
	}

	stopped := false

	inst, err := harness.LoadInstance(dir)
	switch {
	case err == nil:
		stopped = inst.Running()
		if err := inst.Stop(ctx, grace); err != nil {
			return fmt.Errorf("stopping %s: %w", name, err)
		}
	case !errors.Is(err, harness.ErrNoInstance):
		return err
	}

	if purge {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}

	if g.output == "json" {
		return writeJSON(w, map[string]any{"name": name, "stopped": stopped, "purged": purge})
	}

	fmt.Fprintf(w, "%s: stopped=%t purged=%t\n", name, stopped, purge)

	return nil
}
