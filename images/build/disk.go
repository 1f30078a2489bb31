package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	"github.com/siderolabs/talos/pkg/makefs"

	"github.com/labfleet/labfleet/images/spec"
)

const (
	mib = int64(1 << 20)
	// BootTries is systemd-boot's boot counter for a new entry: after this
	// many failed boots it falls back to the previous entry.
	BootTries = 3
	// Partition names (GPT partition names, which Talos and labos look
	// partitions up by): Talos's machinery constants.
	PartESP        = constants.EFIPartitionLabel
	PartMeta       = constants.MetaPartitionLabel
	PartImageCache = constants.ImageCachePartitionLabel
	PartState      = constants.StatePartitionLabel
	// diskImageLabel seeds the disk GUID of a Talos disk image (cmd/installer/pkg/install: diskImageLabel).
	diskImageLabel = "talos-image-disk"
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
	if b.sdboot == "" {
		return errors.New("disk: the UKI step did not sign systemd-boot")
	}

	if b.diskPrep == nil {
		return errors.New("disk: the disk image was not started after the bake step")
	}

	d, out, err := b.diskPrep.take()
	if err != nil {
		return err
	}

	files := []espFile{
		{dst: "EFI/BOOT/BOOTX64.EFI", src: b.sdboot},
		{dst: "loader/loader.conf", data: []byte(LoaderConf(b.def.Name, b.def.EnrollKeys()))},
		{dst: "loader/keys/auto/PK.auth", src: b.keys.PKAuth},
		{dst: "loader/keys/auto/KEK.auth", src: b.keys.KEKAuth},
		{dst: "loader/keys/auto/db.auth", src: b.keys.DBAuth},
		{dst: "EFI/Linux/" + EntryFile(b.def.Name, b.def.Version), src: b.uki},
	}

	// The filesystems read SOURCE_DATE_EPOCH for timestamps and volume IDs.
	imagerMu.Lock()
	defer imagerMu.Unlock()
	defer setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(b.epoch, 10))()

	if err := fillFAT(ctx, d, 1, PartESP, files); err != nil {
		d.Close() //nolint:errcheck

		return fmt.Errorf("writing ESP: %w", err)
	}

	if err := d.Close(); err != nil {
		return fmt.Errorf("closing disk image: %w", err)
	}

	return b.addOutput("disk", out, "")
}

// diskPrep is the part of the disk image that needs no output of the UKI
// step: the IMAGECACHE filesystem (mkfs.ext4 and debugfs), the sparse file,
// the partition table and the IMAGECACHE partition's contents. It runs in
// the background from the end of the bake step, while the UKI step runs
// (Talos's imager leaves the second core mostly idle); the disk step then
// writes only the ESP. The regions written are disjoint and the file starts
// as a hole, so the bytes are those of writing it all in one go.
type diskPrep struct {
	done chan struct{}
	d    *disk.Disk
	out  string
	err  error
}

// startDisk starts the disk image's preparation; stopDisk must follow.
func (b *builder) startDisk(ctx context.Context) {
	p := &diskPrep{done: make(chan struct{})}
	b.diskPrep = p

	go func() {
		defer close(p.done)

		p.d, p.out, p.err = b.prepareDisk(ctx)
	}()
}

// take waits for the preparation and hands its disk to the caller, who
// closes it.
func (p *diskPrep) take() (*disk.Disk, string, error) {
	<-p.done

	d := p.d
	p.d = nil

	return d, p.out, p.err
}

// stopDisk waits for a preparation the build did not take (a failed or
// cancelled build) and closes its disk, before the work folder it reads
// from is removed. ctx's cancellation (by the caller) ends it early.
func (b *builder) stopDisk() {
	if b.diskPrep == nil {
		return
	}

	if d, _, _ := b.diskPrep.take(); d != nil {
		d.Close() //nolint:errcheck
	}
}

func (b *builder) prepareDisk(ctx context.Context) (*disk.Disk, string, error) {
	espMiB := int64(b.def.Disk.ESPMiB)
	stateMiB := int64(b.def.Disk.StateMiB)
	metaMiB := int64(quirks.New(b.def.TalosVersion).PartitionSizes().METASize()) / mib //nolint:gosec // 1 MiB

	cacheImg, cacheMiB, err := b.imageCachePartition(ctx)
	if err != nil {
		return nil, "", err
	}

	size := (1 + espMiB + metaMiB + cacheMiB + stateMiB + 1) * mib
	out := filepath.Join(b.stage, "disk.raw")

	d, err := diskfs.Create(out, size, diskfs.SectorSizeDefault)
	if err != nil {
		return nil, "", fmt.Errorf("creating disk image: %w", err)
	}

	parts := []diskPart{{PartESP, gpt.EFISystemPartition, espMiB}, {PartMeta, gpt.LinuxFilesystem, metaMiB}}
	if cacheImg != "" {
		parts = append(parts, diskPart{PartImageCache, gpt.LinuxFilesystem, cacheMiB})
	}

	parts = append(parts, diskPart{PartState, gpt.LinuxFilesystem, stateMiB})

	if err := layoutDisk(ctx, d, parts, cacheImg); err != nil {
		d.Close() //nolint:errcheck

		return nil, "", err
	}

	return d, out, nil
}

// diskPart is one GPT partition of the disk image.
type diskPart struct {
	name string
	typ  gpt.Type
	mb   int64
}

// layoutDisk writes Talos v1.14's layout for a UEFI (systemd-boot) disk
// image (cmd/installer/pkg/install/install.go, partition options in
// internal/pkg/partition): EFI (FAT32, systemd-boot, keys, the UKI), META
// (zeroes), IMAGECACHE when add-on images are baked (ext4), in that order,
// with GUIDs derived from the labels as Talos derives them for images
// (makefs.GUIDFromLabel). Talos v1.8+ creates STATE and EPHEMERAL on first
// boot in the free space after them; labos cannot grow a GPT, so the image
// carries an empty STATE partition in that place (README: stand-ins).
// It writes the partition table and IMAGECACHE; the ESP's FAT32 is
// written by the disk step (fillFAT) once the UKI is signed.
func layoutDisk(ctx context.Context, d *disk.Disk, parts []diskPart, cacheImg string) error {
	sectors := func(m int64) uint64 { return uint64(m * mib / 512) } //nolint:gosec // sizes are positive
	start := sectors(1)
	table := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: labelGUID(diskImageLabel)}

	for i, p := range parts {
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: i + 1, Start: start, End: start + sectors(p.mb) - 1, Size: uint64(p.mb * mib), //nolint:gosec
			Type: p.typ, Name: p.name, GUID: labelGUID(p.name),
		})
		start += sectors(p.mb)
	}

	if err := d.Partition(table); err != nil {
		return fmt.Errorf("writing partition table: %w", err)
	}

	if cacheImg == "" {
		return nil
	}

	f, err := os.Open(cacheImg)
	if err != nil {
		return fmt.Errorf("writing image cache partition: %w", err)
	}
	defer f.Close() //nolint:errcheck

	if _, err := d.WritePartitionContents(3, ctxReader{ctx, f}); err != nil {
		return fmt.Errorf("writing image cache partition: %w", err)
	}

	return nil
}

// labelGUID is Talos's GUID for a label in reproducible images.
func labelGUID(label string) string {
	return strings.ToUpper(makefs.GUIDFromLabel(label).String())
}

// imageCachePartition makes the IMAGECACHE filesystem: ext4 labelled
// IMAGECACHE holding the Talos image cache tree at its root, as Talos's
// installer formats it for a disk image (internal/pkg/partition/format.go:
// FileSystemTypeExt4, reproducible: UUID and hash seed from the label). It
// returns "" when no add-on images are baked (Talos then has no IMAGECACHE
// either). Its size follows Talos's imager (tree + 20%, whole MiB) unless
// disk.imageCacheMiB sets it.
func (b *builder) imageCachePartition(ctx context.Context) (string, int64, error) {
	tree := b.baked.ImageCacheDir
	if tree == "" {
		return "", 0, nil
	}

	var total int64

	var paths []string

	err := filepath.WalkDir(tree, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(tree, p)
		if err != nil {
			return err
		}

		if rel != "." {
			paths = append(paths, "/"+filepath.ToSlash(rel))
		}

		info, err := de.Info()
		if err != nil {
			return err
		}

		if !de.IsDir() {
			total += info.Size()
		}

		// The tree was written under the caller's umask; mkfs.ext4 -d copies
		// modes, so they are set to what umask 022 gives (a build under 077
		// must give the same bytes).
		mode := fs.FileMode(0o644)
		if de.IsDir() {
			mode = 0o755
		}

		if err := os.Chmod(p, mode); err != nil {
			return err
		}

		// tar --mtime in Talos's makefs: every file at SOURCE_DATE_EPOCH
		return os.Chtimes(p, time.Unix(b.epoch, 0), time.Unix(b.epoch, 0))
	})
	if err != nil {
		return "", 0, fmt.Errorf("reading image cache %s: %w", tree, err)
	}

	// Talos: size + 20%, rounded up to a MiB; plus room for ext4's journal
	// and tables, which a small cache would not cover.
	need := (total*12/10+mib-1)/mib + 8

	sizeMiB := int64(b.def.Disk.ImageCacheMiB)
	if sizeMiB == 0 {
		sizeMiB = need
	} else if sizeMiB < need {
		return "", 0, fmt.Errorf("disk.imageCacheMiB=%d is too small for the %d MiB image cache: raise it to at least %d or set 0 to size it automatically", sizeMiB, total/mib, need)
	}

	img := filepath.Join(b.work, "imagecache.ext4")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		return "", 0, fmt.Errorf("creating image cache filesystem: %w", err)
	}

	if err := os.Truncate(img, sizeMiB*mib); err != nil {
		return "", 0, fmt.Errorf("creating image cache filesystem: %w", err)
	}

	if err := mkfsExt4(ctx, img, PartImageCache, tree, b.epoch, paths); err != nil {
		return "", 0, err
	}

	return img, sizeMiB, nil
}

// mkfsExt4 formats img as ext4 holding dir, with Talos makefs's
// reproducible options (-U and hash_seed from the label). Talos's makefs
// feeds mkfs.ext4 a tar on stdin, which needs e2fsprogs 1.47.1; bookworm's
// 1.47.0 takes the directory instead, copying each file's times (ctime
// cannot be set, reading a directory moves its atime), so debugfs then sets
// every inode's times to epoch: the same inputs give the same bytes. Owners are root's (root_owner, and imagectl runs as the files'
// owner).
func mkfsExt4(ctx context.Context, img, label, dir string, epoch int64, paths []string) error {
	guid := makefs.GUIDFromLabel(label).String()
	env := append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(epoch, 10), "SOURCE_DATE_EPOCH="+strconv.FormatInt(epoch, 10))

	mkfs := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", label, "-U", guid,
		"-E", "hash_seed="+guid+",root_owner=0:0", "-d", dir, img)
	mkfs.Env = env

	if out, err := mkfs.CombinedOutput(); err != nil {
		return fmt.Errorf("formatting IMAGECACHE (mkfs.ext4 from e2fsprogs): %w: %s", err, out)
	}

	sort.Strings(paths)

	stamp := time.Unix(epoch, 0).UTC().Format("20060102150405")

	var cmds strings.Builder

	for _, p := range append([]string{"/", "/lost+found"}, paths...) {
		for _, field := range []string{"atime", "ctime", "mtime"} {
			fmt.Fprintf(&cmds, "set_inode_field %s %s %s\n", p, field, stamp)
		}
	}

	debugfs := exec.CommandContext(ctx, "debugfs", "-w", "-f", "-", img)
	debugfs.Env = env
	debugfs.Stdin = strings.NewReader(cmds.String())

	if out, err := debugfs.CombinedOutput(); err != nil {
		return fmt.Errorf("stamping IMAGECACHE (debugfs from e2fsprogs): %w: %s", err, out)
	}

	return nil
}

func fillFAT(ctx context.Context, d *disk.Disk, part int, label string, files []espFile) error {
	fsys, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: part, FSType: filesystem.TypeFat32, VolumeLabel: label, Reproducible: true})
	if err != nil {
		return fmt.Errorf("creating FAT32: %w", err)
	}

	sort.Slice(files, func(i, j int) bool { return files[i].dst < files[j].dst })

	made := map[string]bool{}

	// One copy buffer for all the files: a fresh 8 MiB per file (six
	// files) was 48 MiB of pages to fault in and zero.
	buf := make([]byte, 8<<20)

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

		if err := writeFATFile(ctx, fsys, "/"+f.dst, f, buf); err != nil {
			return err
		}
	}

	return nil
}

func writeFATFile(ctx context.Context, fsys filesystem.FileSystem, dst string, f espFile, buf []byte) error {
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
	if _, err := io.CopyBuffer(struct{ io.Writer }{w}, ctxReader{ctx, r}, buf); err != nil {
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
