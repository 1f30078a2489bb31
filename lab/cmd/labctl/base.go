package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/lab/labbase"
)

func init() { commands = append(commands, newBaseCommand) }

func newBaseCommand(g *globals) *cobra.Command {
	base := &cobra.Command{
		Use:   "base",
		Short: "Build the lab base (kernel + labos initramfs in Talos's imager layout)",
	}

	o := labbase.Options{}

	build := &cobra.Command{
		Use:   "build",
		Short: "Build the lab base OCI layout",
		Long: `build writes the lab base as an OCI image layout (<out>/oci) holding
usr/install/amd64/{vmlinuz,initramfs.xz,systemd-stub.efi,systemd-boot.efi},
the shape of Talos's imager image. The kernel and systemd-boot come from the
pinned Debian trixie assets (hack/fetch-lab-assets.sh); the initramfs holds
labos as /init, the kernel modules it loads and cryptsetup/mke2fs from the
host. The same inputs give the same digest.

--trivial builds the bare baseline instead: an init that prints a marker
and powers off, for the boot benchmark.`,
		Example: `  hack/fetch-lab-assets.sh
  labctl base build --out _out/labbase
  labctl base build --trivial --out _out/labbase-trivial -o json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBaseBuild(cmd.Context(), g, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}

	f := build.Flags()
	f.StringVar(&o.OutDir, "out", "", "output dir; the layout goes to <out>/oci (default <repo>/_out/labbase)")
	f.StringVar(&o.Version, "version", "1.0.0", "lab base version (image annotation, /etc/labos/version, labos main.version)")
	f.StringVar(&o.AssetsDir, "assets", "", "lab assets dir (default $LABFLEET_CACHE/lab-assets or <repo>/_cache/lab-assets)")
	f.StringVar(&o.LabosBinary, "labos-binary", "", "prebuilt static labos binary (default: go build "+labbase.DefaultLabosPkg+")")
	f.StringVar(&o.Compression, "compression", labbase.CompressionZstd, "initramfs compression: "+strings.Join(labbase.Compressions, ", ")+" (zstd measured fastest to boot, lab/README.md)")
	f.BoolVar(&o.TrivialInit, "trivial", false, "build the bare baseline (trivial init) instead of labos")

	base.AddCommand(build)

	return base
}

func runBaseBuild(ctx context.Context, g *globals, o labbase.Options, stdout, stderr io.Writer) error {
	level := slog.LevelInfo
	if g.output == "json" {
		level = slog.LevelWarn
	}

	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	res, err := labbase.Build(ctx, o)
	if err != nil {
		if errors.Is(err, labbase.ErrNoAssets) {
			return withCode(exitUsage, err)
		}

		return err
	}

	if g.output == "json" {
		return writeJSON(stdout, res)
	}

	fmt.Fprintf(stdout, "layout:     %s\n", res.LayoutDir)
	fmt.Fprintf(stdout, "digest:     %s\n", res.Digest)
	fmt.Fprintf(stdout, "kernel:     %s\n", res.KernelVersion)
	fmt.Fprintf(stdout, "initramfs:  %s (%.1f MB)\n", res.InitramfsPath, float64(res.InitramfsSize)/1e6)
	fmt.Fprintf(stdout, "modules:    %d (built in: %v)\n", len(res.Modules), res.Builtin)

	steps := make([]string, 0, len(res.Timings))
	for s := range res.Timings {
		steps = append(steps, s)
	}

	sort.Strings(steps)

	for _, s := range steps {
		fmt.Fprintf(stdout, "  %-14s %s\n", s, res.Timings[s].Round(1e6))
	}

	return nil
}
