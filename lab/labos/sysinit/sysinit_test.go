package sysinit_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/sysinit"
)

func TestParseCmdline(t *testing.T) {
	c := sysinit.ParseCmdline("console=tty0 console=ttyS0 labos.version=1.1.0 labos.name=lab quiet labos.inject=health-fail x=\"a\"\n")
	require.Equal(t, "ttyS0", c["console"])
	require.Equal(t, "1.1.0", c[sysinit.ParamVersion])
	require.Equal(t, "lab", c[sysinit.ParamName])
	require.Equal(t, "health-fail", c[sysinit.ParamInject])
	require.Equal(t, "a", c["x"])

	_, ok := c["quiet"]
	require.True(t, ok)
}

func TestParseModules(t *testing.T) {
	got := sysinit.ParseModules([]byte("# deps first\nkernel/lib/crc32c.ko\n\n  kernel/fs/ext4/ext4.ko  \n/abs/x.ko\n"))
	require.Equal(t, []string{"kernel/lib/crc32c.ko", "kernel/fs/ext4/ext4.ko", "/abs/x.ko"}, got)
}

func TestFindPartitions(t *testing.T) {
	sys := t.TempDir()
	devs := filepath.Join(sys, "devices/pci0000:00/virtio1/block")
	cls := filepath.Join(sys, "class/block")
	require.NoError(t, os.MkdirAll(cls, 0o755))

	add := func(disk, name, uevent string) {
		dir := filepath.Join(devs, disk)
		if name != disk {
			dir = filepath.Join(dir, name)
		}

		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "uevent"), []byte(uevent), 0o644))
		require.NoError(t, os.Symlink(dir, filepath.Join(cls, name)))
	}

	add("vda", "vda", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\nDISKSEQ=1\n")
	add("vda", "vda1", "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=EFI\n")
	add("vda", "vda3", "MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nPARTN=3\nPARTNAME=STATE\n")
	add("vdb", "vdb", "DEVNAME=vdb\nDEVTYPE=disk\n")
	add("vdb", "vdb1", "DEVNAME=vdb1\nDEVTYPE=partition\nPARTNAME=STATE\n")
	add("vdb", "vdb2", "DEVNAME=vdb2\nDEVTYPE=partition\n")

	parts, err := sysinit.FindPartitions(sys)
	require.NoError(t, err)
	require.Len(t, parts, 3)

	esp, err := sysinit.FindPartition(parts, "EFI", "")
	require.NoError(t, err)
	require.Equal(t, sysinit.Partition{Name: "EFI", Device: "/dev/vda1", Disk: "/dev/vda"}, esp)

	_, err = sysinit.FindPartition(parts, "STATE", "")
	require.ErrorContains(t, err, "2 partitions named STATE")

	st, err := sysinit.FindPartition(parts, "STATE", esp.Disk)
	require.NoError(t, err)
	require.Equal(t, "/dev/vda3", st.Device)

	_, err = sysinit.FindPartition(parts, "IMAGECACHE", "")
	require.Error(t, err)
}
