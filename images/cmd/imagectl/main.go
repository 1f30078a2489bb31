// Command imagectl cuts signed Talos UKIs, bootable disk images and installer
// images from declarative definitions in images/*.yaml.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/labfleet/labfleet/extensions/addonscmd"
	"github.com/labfleet/labfleet/images/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()

	if err != nil {
		fmt.Fprintln(os.Stderr, "imagectl:", err)
		os.Exit(exitCode(err))
	}
}

// exitCode is the one place errors become exit codes: 2 for bad input
// (definitions, flags, keys), 1 for everything else.
func exitCode(err error) int {
	var u *cli.UsageError
	if errors.As(err, &u) || errors.Is(err, addonscmd.ErrUsage) {
		return 2
	}

	return 1
}
