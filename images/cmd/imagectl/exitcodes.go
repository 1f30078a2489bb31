package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/labfleet/labfleet/extensions/addonscmd"
	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/cli"
	"github.com/labfleet/labfleet/images/inspect"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/spec"
)

// Exit codes. This file is the one place errors become exit codes.
const (
	exitOK       = 0
	exitFailure  = 1
	exitBadInput = 2
)

// badInput is the table of errors that mean "the input is wrong, fix it":
// a definition, key, file or flag problem. Anything else is a failure.
var badInput = []struct {
	what  string
	match func(error) bool
}{
	{"a flag, argument or -o value (cli.UsageError)", func(err error) bool { var u *cli.UsageError; return errors.As(err, &u) }},
	{"a definition field (spec.FieldError)", func(err error) bool { var f *spec.FieldError; return errors.As(err, &f) }},
	{"a missing or invalid keys directory, or a PKCS#11 user PIN (LABFLEET_PKCS11_PIN) missing or refused by the token (keys.ErrInvalid)", func(err error) bool { return errors.Is(err, keys.ErrInvalid) }},
	{"a base whose digest no longer matches base.digest (base.ErrDigestMismatch)", func(err error) bool { return errors.Is(err, base.ErrDigestMismatch) }},
	{"a file inspect cannot read as PE or GPT, or a bad --cert (inspect.ErrBadInput)", func(err error) bool { return errors.Is(err, inspect.ErrBadInput) }},
	{"an add-ons command's input (addonscmd.ErrUsage)", func(err error) bool { return errors.Is(err, addonscmd.ErrUsage) }},
}

// exitCode maps an error returned by a command to the process exit code.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}

	for _, b := range badInput {
		if b.match(err) {
			return exitBadInput
		}
	}

	return exitFailure
}

// exitCodesHelp is appended to every command's --help.
const exitCodesHelp = `
Exit codes:
  0  success
  1  failure: build, registry, I/O or verification failed, or interrupted
  2  bad input: a definition, key, file or flag problem (the message names
     it and says what to do)`

// documentExitCodes appends the exit codes to the help of cmd and all its
// subcommands, and makes flag and argument errors bad input: cobra returns
// them as plain errors.
func documentExitCodes(cmd *cobra.Command) {
	if !strings.Contains(cmd.Long, "Exit codes:") {
		long := cmd.Long
		if long == "" {
			long = cmd.Short
		}

		cmd.Long = strings.TrimRight(long, "\n") + "\n" + exitCodesHelp
	}

	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.BadInput(err) })

	if args := cmd.Args; args != nil {
		cmd.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return cli.BadInput(fmt.Errorf("%s: %w", c.CommandPath(), err))
			}

			return nil
		}
	}

	for _, c := range cmd.Commands() {
		documentExitCodes(c)
	}
}
