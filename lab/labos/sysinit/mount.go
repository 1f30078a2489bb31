package sysinit

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Mount is one filesystem to mount.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	Optional               bool // failure is not fatal (e.g. efivarfs on a BIOS boot)
}

// EarlyMounts are the pseudo filesystems PID 1 needs before anything else.
var EarlyMounts = []Mount{
	{Source: "proc", Target: "/proc", FSType: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
	{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755"},
	{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777"},
}

// EFIVarsMount needs the efivarfs module, so it is mounted after modules load.
var EFIVarsMount = Mount{
	Source: "efivarfs", Target: "/sys/firmware/efi/efivars", FSType: "efivarfs",
	Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Optional: true,
}

// Do mounts m, creating the target; an already mounted target is fine.
func (m Mount) Do() error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil && !m.Optional {
		return fmt.Errorf("mounting %s: %w", m.Target, err)
	}

	err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data)
	if err == nil || errors.Is(err, unix.EBUSY) {
		return nil
	}

	if m.Optional {
		return nil
	}

	return fmt.Errorf("mounting %s on %s: %w", m.FSType, m.Target, err)
}

// Console points stdin/stdout/stderr at /dev/console: when the initramfs
// has no /dev/console node the kernel starts init with no descriptors.
func Console() error {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("opening console: %w", err)
	}

	for _, fd := range []int{0, 1, 2} {
		if err := unix.Dup2(int(f.Fd()), fd); err != nil {
			return fmt.Errorf("attaching console: %w", err)
		}
	}

	return nil
}

// Shutdown syncs, unmounts what labos mounted read-write (in reverse) and
// reboots or powers off. It only returns on failure.
func Shutdown(powerOff bool, mounts []string) error {
	unix.Sync()

	for i := len(mounts) - 1; i >= 0; i-- {
		_ = unix.Unmount(mounts[i], 0)
	}

	unix.Sync()

	cmd := unix.LINUX_REBOOT_CMD_RESTART
	if powerOff {
		cmd = unix.LINUX_REBOOT_CMD_POWER_OFF
	}

	return unix.Reboot(cmd)
}
