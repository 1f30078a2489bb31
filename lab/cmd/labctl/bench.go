package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

func init() { commands = append(commands, newBenchCommand) }

func newBenchCommand(g *globals) *cobra.Command {
	var (
		runs    int
		timeout time.Duration
		cfg     configOptions
	)

	cmd := &cobra.Command{
		Use:   "bench LAB-DISK BASELINE-DISK",
		Short: "Compare boot-to-healthy of a lab image with the bare baseline",
		Long: `bench boots LAB-DISK to its healthy status and BASELINE-DISK (the same
pipeline on the trivial base, built with 'labctl base build --trivial') to
its init marker, alternately, --runs times each, and reports the times and
how much labos adds. Each disk first gets a fresh machine and one warm-up
boot that enrolls the keys (and seals STATE, and takes the machine config
from --keys or --config); the measured boots are the later ones, as a node
boots in the field.`,
		Example: `  labctl base build --trivial --out _out/labbase-trivial
  # build both images with imagectl, then:
  labctl bench _out/labos/disk.raw _out/labos-trivial/disk.raw --keys _out/keys --runs 5 -o json`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBench(cmd.Context(), g, args[0], args[1], runs, timeout, cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}

	(&cfg).flags(cmd.Flags())
	cmd.Flags().IntVar(&runs, "runs", 5, "measured boots per disk")
	cmd.Flags().DurationVar(&timeout, "timeout", 4*time.Minute, "per-boot wait")

	return cmd
}

type benchRun struct {
	LabSeconds      float64 `json:"labSeconds"`     // QEMU start to healthy status
	LabInitSeconds  float64 `json:"labInitSeconds"` // QEMU start to labos's init marker
	BaselineSeconds float64 `json:"baselineSeconds"`
}

type benchResult struct {
	Runs            []benchRun `json:"runs"`
	LabMean         float64    `json:"labMeanSeconds"`
	LabInitMean     float64    `json:"labInitMeanSeconds"`
	BaselineMean    float64    `json:"baselineMeanSeconds"`
	OverheadPercent float64    `json:"overheadPercent"` // (lab - baseline) / baseline
}

func runBench(ctx context.Context, g *globals, lab, baseline string, runs int, timeout time.Duration, cfg configOptions, stdout, stderr io.Writer) error {
	if runs < 1 {
		return usageErr("--runs must be at least 1")
	}

	labOpts := func(fresh bool) *upOptions {
		// the warm-up boot takes the config; the measured boots run on it
		return &upOptions{name: "bench-lab", vars: "empty", fresh: fresh, timeout: timeout, memory: 1024, accel: "tcg", config: cfg}
	}
	baseOpts := func(fresh bool) *upOptions {
		return &upOptions{name: "bench-baseline", vars: "empty", fresh: fresh, timeout: timeout, memory: 1024, accel: "tcg", until: nodeapi.MarkerInit}
	}

	quiet := *g
	quiet.output = "json" // no per-boot chatter

	var res benchResult

	for i := 0; i <= runs; i++ {
		warmup := i == 0

		l, err := bootNode(ctx, &quiet, labOpts(warmup), lab, stderr)
		if err != nil {
			return fmt.Errorf("lab boot %d: %w", i, err)
		}

		if !l.Healthy {
			return withCode(exitUnhealthy, fmt.Errorf("lab boot %d is unhealthy (console %s)", i, l.Console))
		}

		b, err := bootNode(ctx, &quiet, baseOpts(warmup), baseline, stderr)
		if err != nil {
			return fmt.Errorf("baseline boot %d: %w", i, err)
		}

		if warmup {
			continue
		}

		res.Runs = append(res.Runs, benchRun{LabSeconds: l.BootSeconds, LabInitSeconds: l.InitSeconds, BaselineSeconds: b.BootSeconds})

		if g.output == "text" {
			fmt.Fprintf(stderr, "run %d: lab %.1f s (init %.1f), baseline %.1f s\n", i, l.BootSeconds, l.InitSeconds, b.BootSeconds)
		}
	}

	for _, r := range res.Runs {
		res.LabMean += r.LabSeconds / float64(runs)
		res.LabInitMean += r.LabInitSeconds / float64(runs)
		res.BaselineMean += r.BaselineSeconds / float64(runs)
	}

	res.OverheadPercent = (res.LabMean - res.BaselineMean) / res.BaselineMean * 100

	if g.output == "json" {
		return writeJSON(stdout, res)
	}

	fmt.Fprintf(stdout, "lab boot-to-healthy: %.1f s (init marker at %.1f s)\n", res.LabMean, res.LabInitMean)
	fmt.Fprintf(stdout, "baseline to init:    %.1f s\n", res.BaselineMean)
	fmt.Fprintf(stdout, "labos adds:          %.0f %%\n", res.OverheadPercent)

	return nil
}
