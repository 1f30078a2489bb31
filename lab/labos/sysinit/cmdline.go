// Package sysinit does the PID 1 chores: mounts, console, kernel modules,
// the kernel command line, partitions by GPT name, the virtio NIC, and
// reboot/power off.
package sysinit

import (
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Kernel command line parameters labos reads.
const (
	ParamVersion = "labos.version" // image version (the builder sets it; the UKI's .osrel is not visible to the initrd)
	ParamName    = "labos.name"    // image name, the boot entry prefix (NAME-VERSION.efi)
	ParamInject  = "labos.inject"  // test injection: "health-fail"
	// ParamDB is the lowercase hex sha256 of the db certificate the image
	// was built for; STATE is sealed only while that certificate is in db.
	ParamDB = "labos.db"
	// ParamPause is a test injection: at every power-cut checkpoint labos
	// pauses this long (a Go duration) so a test can cut power there.
	ParamPause = "labos.pause"
)

// Cmdline is the parsed kernel command line (last value wins, as the kernel's own parsing does).
type Cmdline map[string]string

// ParseCmdline splits a command line into key=value pairs (flags get "").
func ParseCmdline(s string) Cmdline {
	c := Cmdline{}

	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		c[k] = strings.Trim(v, `"`)
	}

	return c
}

// ReadCmdline reads /proc/cmdline.
func ReadCmdline() (Cmdline, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, err
	}

	return ParseCmdline(string(b)), nil
}

// Uptime is the time since the kernel started (CLOCK_BOOTTIME, the clock
// of the kernel's own message timestamps, give or take its early boot):
// labos prints it in front of every console marker.
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}

	return time.Duration(ts.Nano())
}
