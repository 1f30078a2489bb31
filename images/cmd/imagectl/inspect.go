package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/images/cli"
	"github.com/labfleet/labfleet/images/inspect"
)

func init() { commands = append(commands, newInspectCommand) }

func newInspectCommand() *cobra.Command {
	var (
		cert   string
		output string
	)

	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Show what is inside a UKI, EFI binary or disk image",
		Long: `Inspect reads a PE/EFI binary (a UKI, systemd-boot) or a GPT disk image.

For a PE: its sections with sizes and sha256 digests (the bytes systemd-stub
measures), the Authenticode digest and signers, and for a UKI the os-release,
kernel command line, uname, SBAT, the PCR public key and the decoded .pcrsig:
each signed policy is checked against .pcrpkey and against the PCR 11 value
predicted from the UKI's own measured sections (systemd-stub's order, then
the boot phases); a policy signed for other sections is a "pcrsig mismatch"
and inspect exits 1 even without --cert (the TPM would refuse to unseal).

For a disk image: the partitions, every file on the EFI System Partition,
and the PE report of every .efi under EFI/ (systemd-boot and the UKIs).

With --cert, every Authenticode signature is verified against that
certificate (the keys directory's uki-signing-cert.pem is the db entry);
inspect exits 1 and says why when any binary fails.`,
		Example: `  # a UKI, verified against the db certificate
  imagectl inspect _out/lab/lab.efi --cert _out/keys/uki-signing-cert.pem

  # a disk image: partitions, ESP files, each EFI binary
  imagectl inspect _out/lab/disk.raw

  # machine-readable, e.g. the PCR policy digests
  imagectl inspect _out/lab/lab.efi -o json | jq '.pe.pcrSignature'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cli.CheckOutput(output); err != nil {
				return err
			}

			r, err := inspect.Inspect(args[0], inspect.Options{CertPath: cert})
			if err != nil {
				return fmt.Errorf("inspecting: %w", err)
			}

			if output == cli.OutputJSON {
				err = cli.WriteJSON(cmd.OutOrStdout(), r)
			} else {
				err = r.WriteText(cmd.OutOrStdout())
			}

			if err != nil {
				return err
			}

			if checked, ok, failures := r.Verification(); checked && !ok {
				return fmt.Errorf("verification against %s failed: %s", cert, strings.Join(failures, "; "))
			}

			// The PCR policy check needs no certificate: the UKI carries both.
			if failures := r.PCRFailures(); len(failures) > 0 {
				return fmt.Errorf("verification failed: %s", strings.Join(failures, "; "))
			}

			return nil
		},
	}

	cmd.Flags().StringVar(&cert, "cert", "", "certificate (PEM or DER) to verify Authenticode signatures against")
	cmd.Flags().StringVarP(&output, "output", "o", cli.OutputText, "output format: text or json")

	return cmd
}
