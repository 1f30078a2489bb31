package main

import (
	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newKeysCommand) }

// keysSubcommands is filled by the keys_*.go files, one verb per file.
var keysSubcommands []func() *cobra.Command

func newKeysCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create and check signing-key directories",
		Long: `A keys directory holds everything an image is signed with, under Talos's
own file names (docs/contracts.md):

  uki-signing-key.pem, uki-signing-cert.pem  RSA-4096 Authenticode signer (the db entry)
  pcr-signing-key.pem                        RSA-2048 PCR policy signer (TPM unlock)
  pk-*.pem, kek-*.pem                        Secure Boot owner keys
  PK.auth, KEK.auth, db.auth                 signed updates for systemd-boot auto-enrollment
  secrets.yaml, talosconfig                  machine secrets and an os:admin client config

Private files are mode 0600. Keep the directory out of version control.`,
	}

	for _, c := range keysSubcommands {
		cmd.AddCommand(c())
	}

	return cmd
}
