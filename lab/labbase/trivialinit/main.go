// Command trivialinit is the bare baseline /init for the boot benchmark: it
// prints the labos init and poweroff markers and powers the machine off, so
// a boot of the same UKI with it measures firmware + stub + kernel alone.
package main

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

var version = "trivial"

func main() {
	// the uptime in front, as labos prints it: the harness reads the
	// kernel's share of the boot from it
	fmt.Println(nodeapi.FormatMarkerAt(uptime(), nodeapi.MarkerInit, "version="+version+" trivial=true"))
	fmt.Println(nodeapi.FormatMarkerAt(uptime(), nodeapi.MarkerPoweroff, ""))

	// PID 1 must never exit (the kernel panics); power off instead.
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintln(os.Stderr, "trivialinit: poweroff:", err)
	}

	select {}
}

func uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}

	return time.Duration(ts.Nano())
}
