// Command trivialinit is the bare baseline /init for the boot benchmark: it
// prints the labos init and poweroff markers and powers the machine off, so
// a boot of the same UKI with it measures firmware + stub + kernel alone.
package main

import (
	"fmt"
	"os"
	"syscall"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

var version = "trivial"

func main() {
	fmt.Println(nodeapi.FormatMarker(nodeapi.MarkerInit, "version="+version+" trivial=true"))
	fmt.Println(nodeapi.FormatMarker(nodeapi.MarkerPoweroff, ""))

	// PID 1 must never exit (the kernel panics); power off instead.
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintln(os.Stderr, "trivialinit: poweroff:", err)
	}

	select {}
}
