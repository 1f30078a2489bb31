// Command fleetctl rolls images out to fleets of Talos (and labos) clusters
// in safe, resumable waves. See fleetctl/README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
)

// Garbage collector defaults for fleetctl's own process (the environment's
// GOGC and GOMEMLIMIT still win). A rollout allocates in bursts (node rows,
// audit lines, health polls): measured on 30,000 and 300,000 simulated
// nodes, GOGC=200 cut CPU by 13 % and 19 %, and the soft limit keeps the
// 300,000-node peak where it was with the default (527 against 532 MiB);
// fleetctl/README.md "Performance".
const (
	gcPercent   = 200
	memoryLimit = 480 << 20
)

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}

	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}

	// FLEETCTL_CPUPROFILE=FILE writes a CPU profile (go tool pprof), for the
	// bench's profiling runs.
	if path := os.Getenv("FLEETCTL_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])

	stop()

	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetctl:", err)
	}

	pprof.StopCPUProfile() // os.Exit skips the deferred call

	// FLEETCTL_MEMPROFILE=FILE writes an allocation profile at exit.
	if path := os.Getenv("FLEETCTL_MEMPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0) //nolint:errcheck
			f.Close()                            //nolint:errcheck
		}
	}

	os.Exit(exitCode(err))
}

func run(ctx context.Context, args []string) error {
	root := newRoot()
	root.SetArgs(args)

	return root.ExecuteContext(ctx)
}
