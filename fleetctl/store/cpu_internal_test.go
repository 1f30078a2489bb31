package store

import (
	"syscall"
	"time"
)

// cpuNow is this process's CPU time so far (user + system).
func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru) //nolint:errcheck

	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
