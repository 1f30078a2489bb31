// Package cputime reads this process's CPU time, for the benchmarks whose
// targets are about CPU seconds (issue 13): ns/op spreads the garbage
// collector's background work over wall time, getrusage counts it.
package cputime

import (
	"syscall"
	"time"
)

// Process is this process's CPU time so far (user + system).
func Process() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru) //nolint:errcheck // RUSAGE_SELF cannot fail

	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
