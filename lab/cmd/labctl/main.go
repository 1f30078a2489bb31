// Command labctl builds the lab base and boots lab disk images under QEMU
// with OVMF Secure Boot firmware and a swtpm TPM.
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
		fmt.Fprintln(os.Stderr, "labctl:", err)
		os.Exit(exitCode(err))
	}
}
