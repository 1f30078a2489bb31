// Package testimage makes small bootable disk images for harness tests: a
// GPT disk whose ESP holds systemd-boot and an unsigned UKI assembled from
// the lab assets (trixie kernel and stub) and a given initramfs. Unsigned is
// enough for a VM in Setup Mode; Secure Boot images come from imagectl.
//
// The UKI is put together with binutils' objcopy, the classic way before
// ukify existed; it is a test shortcut, not the lab's image builder.
package testimage

import (
	"context"
	"debug/pe"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// Options for Disk.
type Options struct {
	// Stub is systemd's linuxx64.efi.stub.
	Stub string
	// Boot is systemd-bootx64.efi, installed as EFI/BOOT/BOOTX64.EFI.
	Boot string
	// Kernel is the vmlinuz.
	Kernel string
	// Initramfs is the compressed initramfs.
	Initramfs string
	// Cmdline is the kernel command line. Default "console=ttyS0".
	Cmdline string
	// EntryName is the UKI file name under EFI/Linux. Default "lab-1.efi".
	EntryName string
	// ExtraPartitionMiB adds an empty Linux partition (STATE) of this size.
	ExtraPartitionMiB int
}

// UKI assembles an unsigned UKI at out.
func UKI(ctx context.Context, opts Options, out string) error {
	tmp, err := os.MkdirTemp("", "uki-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) //nolint:errcheck

	cmdline := opts.Cmdline
	if cmdline == "" {
		cmdline = "console=ttyS0"
	}

	osrel := filepath.Join(tmp, "osrel")
	cmdf := filepath.Join(tmp, "cmdline")

	if err := os.WriteFile(osrel, []byte("NAME=labtest\nID=labtest\nVERSION_ID=1\n"), 0o644); err != nil {
		return err
	}

	if err := os.WriteFile(cmdf, []byte(cmdline), 0o644); err != nil {
		return err
	}

	// New sections go after the stub's last one, page aligned, at absolute
	// addresses (image base + RVA) as objcopy wants them.
	f, err := pe.Open(opts.Stub)
	if err != nil {
		return fmt.Errorf("reading stub: %w", err)
	}

	oh, ok := f.OptionalHeader.(*pe.OptionalHeader64)
	if !ok {
		f.Close() //nolint:errcheck

		return fmt.Errorf("stub is not PE32+")
	}

	var end uint64
	for _, s := range f.Sections {
		if e := uint64(s.VirtualAddress) + uint64(s.VirtualSize); e > end {
			end = e
		}
	}

	f.Close() //nolint:errcheck

	const align = 0x1000

	next := (end + align - 1) / align * align
	args := []string{}

	for _, s := range []struct{ name, path string }{
		{".osrel", osrel}, {".cmdline", cmdf}, {".initrd", opts.Initramfs}, {".linux", opts.Kernel},
	} {
		st, err := os.Stat(s.path)
		if err != nil {
			return err
		}

		args = append(args, "--add-section", s.name+"="+s.path,
			"--change-section-vma", fmt.Sprintf("%s=%#x", s.name, oh.ImageBase+next))
		next = (next + uint64(st.Size()) + align - 1) / align * align
	}

	args = append(args, opts.Stub, out)

	if o, err := exec.CommandContext(ctx, "objcopy", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("objcopy: %w: %s", err, strings.TrimSpace(string(o)))
	}

	return nil
}

// Disk writes a bootable raw disk image at out.
func Disk(ctx context.Context, opts Options, out string) error {
	if opts.EntryName == "" {
		opts.EntryName = "lab-1.efi"
	}

	uki := out + ".uki.efi"
	defer os.Remove(uki) //nolint:errcheck

	if err := UKI(ctx, opts, uki); err != nil {
		return err
	}

	const (
		mib      = 1 << 20
		espStart = 2048
		espMiB   = 96
	)

	size := int64(espMiB+2) * mib
	if opts.ExtraPartitionMiB > 0 {
		size += int64(opts.ExtraPartitionMiB) * mib
	}

	_ = os.Remove(out)

	d, err := diskfs.Create(out, size, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("creating disk: %w", err)
	}
	defer d.Close() //nolint:errcheck

	parts := []*gpt.Partition{{
		Index: 1, Start: espStart, End: espStart + espMiB*mib/512 - 1,
		Type: gpt.EFISystemPartition, Name: "EFI",
	}}

	if opts.ExtraPartitionMiB > 0 {
		start := parts[0].End + 1
		parts = append(parts, &gpt.Partition{
			Index: 2, Start: start, End: start + uint64(opts.ExtraPartitionMiB)*mib/512 - 1,
			Type: gpt.LinuxFilesystem, Name: "STATE",
		})
	}

	if err := d.Partition(&gpt.Table{Partitions: parts, LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true}); err != nil {
		return fmt.Errorf("partitioning: %w", err)
	}

	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 1, FSType: filesystem.TypeFat32, VolumeLabel: "EFI"})
	if err != nil {
		return fmt.Errorf("formatting ESP: %w", err)
	}

	files := []struct{ dst, src, content string }{
		{dst: "/EFI/BOOT/BOOTX64.EFI", src: opts.Boot},
		{dst: "/EFI/Linux/" + opts.EntryName, src: uki},
		{dst: "/loader/loader.conf", content: "timeout 0\n"},
	}

	for _, dir := range []string{"/EFI", "/EFI/BOOT", "/EFI/Linux", "/loader"} {
		if err := fs.Mkdir(dir); err != nil {
			return fmt.Errorf("ESP mkdir %s: %w", dir, err)
		}
	}

	for _, f := range files {
		w, err := fs.OpenFile(f.dst, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("ESP %s: %w", f.dst, err)
		}

		var r io.Reader = strings.NewReader(f.content)

		if f.src != "" {
			in, err := os.Open(f.src)
			if err != nil {
				return err
			}
			defer in.Close() //nolint:errcheck

			r = in
		}

		if _, err := io.Copy(w, r); err != nil {
			return fmt.Errorf("ESP %s: %w", f.dst, err)
		}

		if err := w.Close(); err != nil {
			return fmt.Errorf("ESP %s: %w", f.dst, err)
		}
	}

	return nil
}
