package build

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/labfleet/labfleet/images/spec"
)

const (
	mib = int64(1 << 20)
	// BootTries is systemd-boot's boot counter for a new entry: after this
	// many failed boots it falls back to the previous entry.
	BootTries = 3
	// Partition names the node looks for.
	PartESP        = "EFI"
	PartImageCache = "IMAGECACHE"
	PartState      = "STATE"
)

// EntryFile is the UKI's name on the ESP with a fresh boot counter.
func EntryFile(name, version string) string {
	return fmt.Sprintf("%s-%s+%d.efi", name, version, BootTries)
}

// LoaderConf is systemd-boot's configuration. The default is a glob so that
// an entry whose boot counter ran out sorts last and the previous one boots
// (an exact default would pin a broken entry; see docs/contracts.md).
// enroll is secure-boot-enroll (spec.EnrollModes); in manual mode the menu
// is shown for 10 s, since timeout 0 would hide the enroll entry.
func LoaderConf(name, enroll string) string {
	timeout := 0
	if enroll == spec.EnrollManual {
		timeout = 10
	}

	return fmt.Sprintf("timeout %d\ndefault %s-*\nsecure-boot-enroll %s\nconsole-mode keep\n", timeout, name, enroll)
}

// espFile is one file to put on the ESP.
type espFile struct {
	dst  string // path on the ESP, forward slashes
	src  string // local file
	data []byte
}

func (b *builder) writeDisk(ctx context.Context) error {
	sdboot := filepath.Join(b.work, "BOOTX64.EFI")
	if err := b.signPE(b.base.Files["systemd-boot.efi"].Path, sdboot); err != nil {
		return fmt.Errorf("signing systemd-boot: %w", err)
	}

	files := []espFile{
		{dst: "EFI/BOOT/BOOTX64.EFI", src: sdboot},
		{dst: "loader/loader.conf", data: []byte(LoaderConf(b.def.Name, b.def.EnrollKeys()))},
		{dst: "loader/keys/auto/PK.auth", src: b.keys.PKAuth},
		{dst: "loader/keys/auto/KEK.auth", src: b.keys.KEKAuth},
		{dst: "loader/keys/auto/db.auth", src: b.keys.DBAuth},
		{dst: "EFI/Linux/" + EntryFile(b.def.Name, b.def.Version), src: b.uki},
	}

	cacheMiB, cacheFiles, err := b.imageCacheFiles()
	if err != nil {
		return err
	}

	espMiB := int64(b.def.Disk.ESPMiB)
	stateMiB := int64(b.def.Disk.StateMiB)
	size := (1 + espMiB + cacheMiB + stateMiB + 1) * mib
	out := filepath.Join(b.stage, "disk.raw")

	// The filesystems read SOURCE_DATE_EPOCH for timestamps and volume IDs.
	imagerMu.Lock()
	defer imagerMu.Unlock()
	defer setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(b.epoch, 10))()

	d, err := diskfs.Create(out, size, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("creating disk image: %w", err)
	}

	if err := layoutDisk(ctx, b, d, espMiB, cacheMiB, stateMiB, files, cacheFiles); err != nil {
		d.Close() //nolint:errcheck

		return err
	}

	if err := d.Close(); err != nil {
		return fmt.Errorf("closing disk image: %w", err)
	}

	return b.addOutput("disk", out, "")
}

func layoutDisk(ctx context.Context, b *builder, d *disk.Disk, espMiB, cacheMiB, stateMiB int64, files, cacheFiles []espFile) error {

	sectors := func(m int64) uint64 { return uint64(m * mib / 512) }
	start := sectors(1)
	parts := []*gpt.Partition{}

	for i, p := range []struct {
		name string
		typ  gpt.Type
		mb   int64
	}{
		{PartESP, gpt.EFISystemPartition, espMiB},
		{PartImageCache, gpt.LinuxFilesystem, cacheMiB},
		{PartState, gpt.LinuxFilesystem, stateMiB},
	} {
		parts = append(parts, &gpt.Partition{
			Index: i + 1, Start: start, End: start + sectors(p.mb) - 1, Size: uint64(p.mb * mib),
			Type: p.typ, Name: p.name, GUID: b.guid("part-" + p.name),
		})
		start += sectors(p.mb)
	}

	table := &gpt.Table{Partitions: parts, LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: b.guid("disk")}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("writing partition table: %w", err)
	}

	if err := fillFAT(ctx, d, 1, "EFI", files); err != nil {
		return fmt.Errorf("writing ESP: %w", err)
	}

	if err := fillFAT(ctx, d, 2, "IMAGECACHE", cacheFiles); err != nil {
		return fmt.Errorf("writing image cache partition: %w", err)
	}

	return nil
}

// imageCacheFiles lists the add-on image cache (an OCI layout) and sizes its partition.
func (b *builder) imageCacheFiles() (int64, []espFile, error) {
	var files []espFile

	var total int64

	if b.baked.CacheLayoutDir != "" {
		err := filepath.WalkDir(b.baked.CacheLayoutDir, func(p string, de fs.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}

			rel, err := filepath.Rel(b.baked.CacheLayoutDir, p)
			if err != nil {
				return err
			}

			info, err := de.Info()
			if err != nil {
				return err
			}

			total += info.Size()
			files = append(files, espFile{dst: filepath.ToSlash(rel), src: p})

			return nil
		})
		if err != nil {
			return 0, nil, fmt.Errorf("reading image cache layout: %w", err)
		}
	}

	sizeMiB := int64(b.def.Disk.ImageCacheMiB)
	need := total*11/10/mib + 40 // FAT overhead and slack; FAT32 needs at least ~33 MiB here

	if sizeMiB == 0 {
		sizeMiB = need
	} else if sizeMiB < need {
		return 0, nil, fmt.Errorf("disk.imageCacheMiB=%d is too small for the %d MiB image cache: raise it to at least %d or set 0 to size it automatically", sizeMiB, total/mib, need)
	}

	return sizeMiB, files, nil
}

// guid derives a stable GUID so the same inputs give the same disk bytes.
func (b *builder) guid(what string) string {
	sum := sha256.Sum256([]byte(b.def.Name + "\x00" + b.def.Version + "\x00" + what))
	sum[6] = (sum[6] & 0x0f) | 0x40 // version 4 layout
	sum[8] = (sum[8] & 0x3f) | 0x80

	return fmt.Sprintf("%X-%X-%X-%X-%X", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
}

func fillFAT(ctx context.Context, d *disk.Disk, part int, label string, files []espFile) error {
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: part, FSType: filesystem.TypeFat32, VolumeLabel: label, Reproducible: true})
	if err != nil {
		return fmt.Errorf("creating FAT32: %w", err)
	}

	sort.Slice(files, func(i, j int) bool { return files[i].dst < files[j].dst })

	made := map[string]bool{}

	for _, f := range files {
		dir := path.Dir(f.dst)
		if dir != "." && !made[dir] {
			if err := fsys.Mkdir("/" + dir); err != nil {
				return fmt.Errorf("creating /%s: %w", dir, err)
			}

			for p := dir; p != "."; p = path.Dir(p) {
				made[p] = true
			}
		}

		if err := writeFATFile(ctx, fsys, "/"+f.dst, f); err != nil {
			return err
		}
	}

	return nil
}

func writeFATFile(ctx context.Context, fsys filesystem.FileSystem, dst string, f espFile) error {
	w, err := fsys.OpenFile(dst, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("creating %s: %w", dst, err)
	}
	defer w.Close() //nolint:errcheck

	var r io.Reader = strings.NewReader(string(f.data))

	if f.src != "" {
		in, err := os.Open(f.src)
		if err != nil {
			return fmt.Errorf("reading %s: %w", f.src, err)
		}
		defer in.Close() //nolint:errcheck

		r = in
	}

	// go-diskfs updates the FAT on every allocating write: large writes are
	// several times faster than io.Copy's 32 KiB pieces (make bench). The
	// struct hides WriterTo/ReaderFrom so the buffer size is what is used.
	// ctxReader ends the copy at Ctrl-C: the disk step is the longest one.
	if _, err := io.CopyBuffer(struct{ io.Writer }{w}, ctxReader{ctx, r}, make([]byte, 8<<20)); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}

	return nil
}

// ctxReader fails reads once ctx is done, so long copies stop at Ctrl-C.
type ctxReader struct {
	ctx context.Context //nolint:containedctx // lives for one copy
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}

	return c.r.Read(p)
}
