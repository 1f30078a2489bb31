// Command fleetctl rolls images out to fleets of Talos (and labos) clusters
// in safe, resumable waves. See fleetctl/README.md.
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
	err := run(ctx, os.Args[1:])

	stop()

	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetctl:", err)
	}

	os.Exit(exitCode(err))
}

func run(ctx context.Context, args []string) error {
	root := newRoot()
	root.SetArgs(args)

	return root.ExecuteContext(ctx)
}
