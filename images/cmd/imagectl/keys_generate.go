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
	"github.com/labfleet/labfleet/images/keys/hsm"
)

func init() { keysSubcommands = append(keysSubcommands, newKeysGenerateCommand) }

func newKeysGenerateCommand() *cobra.Command {
	var (
		dir    string
		force  bool
		cn     string
		output string
		p11    keys.PKCS11
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
the old set is kept as DIR.previous.

With --pkcs11 MODULE --token LABEL the UKI, PCR, PK and KEK keys are
created inside the PKCS#11 token (sensitive, not extractable; the user PIN
comes from LABFLEET_PKCS11_PIN) and DIR gets only the certificates, the
signed .auth files, the Talos secrets and pkcs11.json, which names the
module, token and key labels. Builds with that folder sign in the token.
Needs an imagectl built with cgo (make build).`,
		Example: `  # keys for the lab (what 'make images' uses)
  imagectl keys generate --dir _out/keys

  # replace a set, naming the certificates after the fleet
  imagectl keys generate --dir /secure/edge-keys --common-name "ACME edge" --force

  # keys inside an HSM (SoftHSM2 shown; any PKCS#11 module works)
  LABFLEET_PKCS11_PIN=1234 imagectl keys generate --dir /secure/edge-keys \
    --pkcs11 /usr/lib/softhsm/libsofthsm2.so --token edge

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

			opts := keys.GenerateOptions{CommonName: cn, Force: force}

			if p11.Module != "" || p11.TokenLabel != "" {
				if p11.Module == "" || p11.TokenLabel == "" {
					return cli.BadInput(errors.New("--pkcs11 MODULE and --token LABEL go together"))
				}

				tok, err := hsm.Open(&p11, os.Getenv(pinEnv))
				if err != nil {
					return cli.BadInput(err)
				}
				defer tok.Close() //nolint:errcheck

				opts.Token, opts.PKCS11 = tok, &p11
			}

			set, err := keys.Generate(dir, opts)
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
	cmd.Flags().StringVar(&p11.Module, "pkcs11", "", "create the private keys in a PKCS#11 token: path of its module (.so)")
	cmd.Flags().StringVar(&p11.TokenLabel, "token", "", "label of the PKCS#11 token (with --pkcs11)")
	cmd.Flags().StringVar(&p11.UKIKeyLabel, "uki-key-label", "labfleet-uki-signing", "token label of the UKI signing key")
	cmd.Flags().StringVar(&p11.PCRKeyLabel, "pcr-key-label", "labfleet-pcr-signing", "token label of the PCR signing key")
	cmd.Flags().StringVar(&p11.PKKeyLabel, "pk-key-label", "labfleet-pk", "token label of the PK")
	cmd.Flags().StringVar(&p11.KEKKeyLabel, "kek-key-label", "labfleet-kek", "token label of the KEK")

	return cmd
}

// pinEnv holds the PKCS#11 user PIN (never a flag: it would show in ps).
const pinEnv = "LABFLEET_PKCS11_PIN"

// writeKeySet prints a set's files with their modes.
func writeKeySet(cmd *cobra.Command, set *keys.Set, verb string) error {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "%s keys in %s\n", verb, set.Dir)

	for _, p := range []string{
		set.UKISigningKey, set.UKISigningCert, set.PCRSigningKey,
		set.PKKey, set.PKCert, set.KEKKey, set.KEKCert,
		set.PKAuth, set.KEKAuth, set.DBAuth, set.Secrets, set.Talosconfig,
	} {
		if p == "" { // a token-backed set has no private key files
			continue
		}

		mode := "?"
		if st, err := os.Stat(p); err == nil {
			mode = st.Mode().Perm().String()
		}

		fmt.Fprintf(w, "  %s\t%s\n", mode, filepath.Base(p))
	}

	if set.PKCS11 != nil {
		fmt.Fprintf(w, "  private keys in PKCS#11 token %q (%s): %s, %s, %s, %s\n", set.PKCS11.TokenLabel, keys.PKCS11File,
			set.PKCS11.UKIKeyLabel, set.PKCS11.PCRKeyLabel, set.PKCS11.PKKeyLabel, set.PKCS11.KEKKeyLabel)
	}

	for _, name := range set.PKCS8 {
		fmt.Fprintf(w, "  note: %s is PKCS#8; it is converted in memory when signing, never copied\n", name)
	}

	return w.Flush()
}
