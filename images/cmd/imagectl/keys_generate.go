package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/images/cli"
	"github.com/labfleet/labfleet/images/keys"
)

func init() { keysSubcommands = append(keysSubcommands, newKeysGenerateCommand) }

func newKeysGenerateCommand() *cobra.Command {
	var (
		dir    string
		force  bool
		cn     string
		output string
	)

	cmd := &cobra.Command{
		Use:   "generate --dir DIR",
		Short: "Generate a complete, self-consistent keys directory",
		Long: `Generate writes a new UKI signer, PCR signer, PK/KEK/db chain with signed
.auth files, Talos machine secrets and an admin talosconfig into DIR.

Existing keys are never overwritten unless --force is given: images signed
with the old keys stop booting on machines enrolled with the new ones, and
disks sealed to the old PCR key no longer unlock. The new set is written to
a temporary directory beside DIR and the folders are swapped at the end, so
an interrupted run leaves either the old set or the new one; with --force
the old set is kept as DIR.previous.`,
		Example: `  # keys for the lab (what 'make images' uses)
  imagectl keys generate --dir _out/keys

  # replace a set, naming the certificates after the fleet
  imagectl keys generate --dir /secure/edge-keys --common-name "ACME edge" --force

  # machine-readable paths for scripts
  imagectl keys generate --dir _out/keys -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.CheckOutput(output); err != nil {
				return err
			}

			if dir == "" {
				return cli.BadInput(errors.New("--dir is required: the directory to write the keys into"))
			}

			set, err := keys.Generate(dir, keys.GenerateOptions{CommonName: cn, Force: force})
			if err != nil {
				if errors.Is(err, keys.ErrExists) || errors.Is(err, keys.ErrInvalid) {
					return cli.BadInput(err)
				}

				return fmt.Errorf("generating keys: %w", err)
			}

			if output == cli.OutputJSON {
				return cli.WriteJSON(cmd.OutOrStdout(), set)
			}

			return writeKeySet(cmd, set, "wrote")
		},
	}

	cmd.Flags().StringVar(&dir, "dir", "", "directory to write the keys into (created if missing)")
	cmd.Flags().BoolVar(&force, "force", false, "replace keys already in --dir")
	cmd.Flags().StringVar(&cn, "common-name", "labfleet", "prefix of the certificate subjects and talosconfig context name")
	cmd.Flags().StringVarP(&output, "output", "o", cli.OutputText, "output format: text or json")

	return cmd
}

// writeKeySet prints a set's files with their modes.
func writeKeySet(cmd *cobra.Command, set *keys.Set, verb string) error {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "%s keys in %s\n", verb, set.Dir)

	for _, p := range []string{
		set.UKISigningKey, set.UKISigningCert, set.PCRSigningKey,
		set.PKKey, set.PKCert, set.KEKKey, set.KEKCert,
		set.PKAuth, set.KEKAuth, set.DBAuth, set.Secrets, set.Talosconfig,
	} {
		mode := "?"
		if st, err := os.Stat(p); err == nil {
			mode = st.Mode().Perm().String()
		}

		fmt.Fprintf(w, "  %s\t%s\n", mode, filepath.Base(p))
	}

	for _, name := range set.PKCS8 {
		fmt.Fprintf(w, "  note: %s is PKCS#8; it is converted in memory when signing, never copied\n", name)
	}

	return w.Flush()
}
