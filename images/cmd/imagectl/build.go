package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/cli"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/spec"
)

func init() { commands = append(commands, newBuildCommand) }

func newBuildCommand() *cobra.Command {
	var (
		root, out, keysDir, output string
		force, quiet, verbose      bool
		insecureRegistries         []string
	)

	cmd := &cobra.Command{
		Use:   "build DEFINITION.yaml...",
		Short: "Build the artifacts of one or more image definitions",
		Long: `build resolves the definition's base by digest, bakes the add-ons and the
machine configuration, assembles and signs the UKI with Talos's imager, and
writes the requested outputs to _out/<name>/:

  <name>.efi     the signed UKI (.pcrsig/.pcrpkey for TPM unlock)
  disk.raw       GPT disk in Talos's layout: EFI (signed systemd-boot,
                 auto-enroll keys, the UKI with a boot counter), META,
                 IMAGECACHE (Talos's image cache, ext4), room for STATE
  installer/     Talos's installer image (Talos's imager, from
                 installer.base) as an OCI layout (pushed too when
                 installer.repository is set)
  build.json     the build record: inputs and outputs with digests, timings

Outputs are written to a temporary folder and moved into place at the end:
a failed build leaves the previous outputs untouched. A rebuild whose inputs
did not change is answered from the build record (no work done); --force
rebuilds anyway. SOURCE_DATE_EPOCH fixes every timestamp (default 1700000000).

Registries are reached as docker would: credentials from the Docker config
($DOCKER_CONFIG/config.json or ~/.docker/config.json, credential helpers
included; 'docker login' writes it), TLS verified against the system roots.
Plain HTTP is used only for a registry listed with --insecure-registry, or
for the base when the definition sets base.insecure.`,
		Example: `  # the lab image (what 'make images' runs)
  imagectl build images/lab.yaml

  # CI: machine-readable record, no progress
  imagectl build images/lab.yaml -o json --quiet

  # a production definition with its own keys
  imagectl build images/edge.yaml --keys /secure/edge-keys`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cli.CheckOutput(output); err != nil {
				return err
			}

			if root == "" {
				var err error
				if root, err = findRoot(); err != nil {
					return err
				}
			}

			var progress io.Writer = cmd.ErrOrStderr()
			if quiet {
				progress = nil
			}

			imagerLog := io.Discard
			if verbose {
				imagerLog = cmd.ErrOrStderr()
			}

			var results []*build.Result

			for _, path := range args {
				def, err := spec.Load(path)
				if err != nil {
					return cli.BadInput(err)
				}

				if progress != nil {
					fmt.Fprintf(progress, "building %s %s (%s)\n", def.Name, def.Version, path)
				}

				baker, err := newBaker(cmd.Context(), root)
				if err != nil {
					return err
				}

				res, err := build.Build(cmd.Context(), def, build.Options{
					Root: root, OutDir: out, KeysDir: keysDir, Force: force,
					Baker: baker, Progress: cli.NewProgress(progress), ImagerLog: imagerLog,
					ToolsPath: filepath.Join(cacheRoot(root), "lab-assets", "tools", "bin"),
					Registry:  base.Registry{Insecure: insecureRegistries},
					PKCS11PIN: os.Getenv(pinEnv),
				})

				baker.Close()

				if err != nil {
					var fe *spec.FieldError
					if errors.As(err, &fe) || errors.Is(err, keys.ErrInvalid) || errors.Is(err, base.ErrDigestMismatch) {
						return cli.BadInput(fmt.Errorf("%s: %w", path, err))
					}

					return fmt.Errorf("%s: %w", path, err)
				}

				results = append(results, res)
			}

			if output == cli.OutputJSON {
				recs := make([]any, 0, len(results))
				for _, r := range results {
					recs = append(recs, r.Record)
				}

				if len(recs) == 1 {
					return cli.WriteJSON(cmd.OutOrStdout(), recs[0])
				}

				return cli.WriteJSON(cmd.OutOrStdout(), recs)
			}

			return printResults(cmd.OutOrStdout(), results)
		},
	}

	cmd.Flags().StringVar(&root, "root", "", "repository root that relative paths resolve against (default: the folder holding go.mod above the current one)")
	cmd.Flags().StringVar(&out, "out", "", "output folder (default <root>/_out)")
	cmd.Flags().StringVar(&keysDir, "keys", "", "keys directory (default: the definition's keys field)")
	cmd.Flags().BoolVar(&force, "force", false, "rebuild even if nothing changed")
	cmd.Flags().StringSliceVar(&insecureRegistries, "insecure-registry", nil, "registry host[:port] to reach over plain HTTP (repeatable; default: TLS for every registry)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the Talos imager's own output")
	cmd.Flags().StringVarP(&output, "output", "o", cli.OutputText, "output format: text or json (the build record)")

	return cmd
}

func printResults(w io.Writer, results []*build.Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)

	for _, r := range results {
		state := "built"
		if r.Record.Cached {
			state = "unchanged (cached)"
		}

		fmt.Fprintf(tw, "%s %s: %s in %s\n", r.Record.Name, r.Record.Version, state, r.Dir)
		fmt.Fprintf(tw, "  schematic\t%s\n", r.Record.SchematicID)

		for _, o := range r.Record.Outputs {
			ref := ""
			if o.Ref != "" {
				ref = "  " + o.Ref
			}

			fmt.Fprintf(tw, "  %s\t%s\tsha256:%s\t%d bytes%s\n", o.Kind, o.Path, o.SHA256, o.Size, ref)
		}

		for _, a := range r.Record.Addons {
			// A stand-in is not the upstream software: say so where people look.
			standin := ""
			if a.Standin {
				standin = " (stand-in)"
			}

			fmt.Fprintf(tw, "  add-on\t%s %s%s\t%d images\n", a.Name, a.Version, standin, len(a.Images))
		}
	}

	return tw.Flush()
}

// findRoot walks up from the working directory to the folder holding go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}

	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}

		parent := filepath.Dir(dir)
		if parent == dir {
			return "", cli.BadInput(errors.New("no go.mod above the current directory: run inside the labfleet checkout or pass --root"))
		}

		dir = parent
	}
}

// cacheRoot is LABFLEET_CACHE or <root>/_cache, as hack/fetch-lab-assets.sh uses.
func cacheRoot(root string) string {
	if c := os.Getenv("LABFLEET_CACHE"); c != "" {
		return c
	}

	return filepath.Join(root, "_cache")
}
