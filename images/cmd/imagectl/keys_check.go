package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/images/cli"
	"github.com/labfleet/labfleet/images/keys"
)

func init() { keysSubcommands = append(keysSubcommands, newKeysCheckCommand) }

func newKeysCheckCommand() *cobra.Command {
	var (
		dir    string
		output string
	)

	cmd := &cobra.Command{
		Use:   "check --dir DIR",
		Short: "Validate a keys directory the way the builder will",
		Long: `Check loads DIR as the builder does: every file present and parseable, the
UKI certificate matching its key, RSA sizes (UKI >= 2048, PCR = 2048), and
the Secure Boot chain (PK.auth signed by PK, KEK.auth by PK, db.auth by KEK
and listing the UKI certificate). PKCS#8 keys are accepted and reported;
check writes nothing. Exit code 2 when invalid.`,
		Example: `  imagectl keys check --dir _out/keys
  imagectl keys check --dir ~/talos/_out -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.CheckOutput(output); err != nil {
				return err
			}

			if dir == "" {
				return cli.BadInput(errors.New("--dir is required: the keys directory to check"))
			}

			set, err := keys.Load(dir)
			if err != nil {
				if errors.Is(err, keys.ErrInvalid) {
					return cli.BadInput(err)
				}

				return fmt.Errorf("checking keys: %w", err)
			}

			if output == cli.OutputJSON {
				return cli.WriteJSON(cmd.OutOrStdout(), set)
			}

			return writeKeySet(cmd, set, "valid")
		},
	}

	cmd.Flags().StringVar(&dir, "dir", "", "keys directory to check")
	cmd.Flags().StringVarP(&output, "output", "o", cli.OutputText, "output format: text or json")

	return cmd
}
