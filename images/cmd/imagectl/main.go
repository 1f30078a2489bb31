// Command imagectl cuts signed Talos UKIs, bootable disk images and installer
// images from declarative definitions in images/*.yaml.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
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
