// Package labbase builds the lab base: an OCI image in the shape of Talos's
// imager image (usr/install/amd64/{vmlinuz,initramfs.xz,systemd-stub.efi,
// systemd-boot.efi}) whose kernel and systemd-boot come from the pinned
// Debian trixie lab assets and whose initramfs runs labos.
//
// The same inputs always give the same bytes: files are written in sorted
// order with fixed timestamps and owners, so the layout digest can be pinned
// by the image builder and compared across machines.
package labbase

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// DefaultModules are the kernel modules labos needs on the lab's QEMU
// machine. Built-in ones are skipped; dependencies are added automatically.
var DefaultModules = []string{
	"virtio_blk", "virtio_pci", "virtio_net", "virtio_rng", // q35 virtio disk, NIC, entropy
	"efivarfs",                                    // Secure Boot / Setup Mode / boot counting variables
	"dm_mod", "dm_crypt", "xts", "algif_skcipher", // LUKS2 aes-xts-plain64; cryptsetup uses AF_ALG for keyslots
	"ext4", "crc32c_generic", // STATE; ext4 asks for crc32c by alias, which nothing loads without modprobe
	"vfat", "nls_cp437", "nls_ascii", "nls_utf8", // ESP
	// no squashfs or loop: labos reads the embedded config extension's
	// squashfs in-process, and each module costs a signature check and
	// load at every boot (about 0.1 s under TCG)
	"tpm_tis", "tpm_crb", // TPM (both built into the Debian kernel)
	"tun", // SideroLink: wireguard-go's TUN device, as Talos's gRPC-tunnel link (lab/labos/siderolink)
}

// DefaultHostBinaries are copied from the host with their shared libraries;
// labos shells out to them for LUKS2 and ext4 (see docs/contracts.md).
var DefaultHostBinaries = map[string]string{
	"/usr/sbin/cryptsetup": "/usr/sbin/cryptsetup",
	"/usr/sbin/mke2fs":     "/usr/sbin/mke2fs",
}

// Options configure one build. Zero values take the documented defaults.
type Options struct {
	// AssetsDir holds the unpacked lab assets written by
	// hack/fetch-lab-assets.sh (vmlinuz, kernel.release, kernel.config,
	// modules/, systemd-stub.efi, systemd-boot.efi).
	// Default: $LABFLEET_CACHE/lab-assets or <RepoDir>/_cache/lab-assets.
	AssetsDir string
	// LabosBinary is a prebuilt static labos binary used as /init. If empty,
	// LabosPackage is built with go build.
	LabosBinary string
	// LabosPackage is the Go package built into /init when LabosBinary is
	// empty. Default: ./lab/labos/cmd/labos.
	LabosPackage string
	// RepoDir is the module root go build runs in. Default: the directory
	// holding go.mod above the working directory.
	RepoDir string
	// OutDir receives the OCI layout (OutDir/oci), the stand-in
	// installer-base layout (OutDir/installer-base) and the initramfs
	// (OutDir/initramfs.xz). Its oci/ and installer-base/ subdirectories
	// are replaced.
	// Default: <RepoDir>/_out/labbase.
	OutDir string
	// Version is the lab base version: the image annotation
	// org.opencontainers.image.version, /etc/labos/version and labos's
	// main.version. Required.
	Version string
	// TrivialInit builds the bare baseline instead: /init is a tiny static
	// Go program that prints the init and poweroff markers and powers off;
	// no modules, no host binaries.
	TrivialInit bool
	// Modules overrides DefaultModules (module names, '-' and '_' equal).
	Modules []string
	// Compression of the initramfs: CompressionZstd (default), gzip, xz,
	// lz4, none, the host tools' zstd-max and xz-max, or a delta-friendly
	// form (zstd-frames, gzip-rsyncable, zstd-rsyncable; README.md "The
	// real lab initramfs, measured"). See Compressions.
	Compression string
	// HostBinaries overrides DefaultHostBinaries (initramfs path -> host path).
	HostBinaries map[string]string
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

// Result describes what Build wrote.
type Result struct {
	// LayoutDir is the OCI image layout directory (one image in its index).
	LayoutDir string
	// InstallerBaseDir is the OCI layout of the stand-in installer-base
	// (OutDir/installer-base), in Talos's installer-base layout.
	InstallerBaseDir string
	// Digest is the image manifest digest ("sha256:...").
	Digest string
	// KernelVersion is the kernel release (uname -r) of the lab assets.
	KernelVersion string
	// InitramfsPath is a copy of the compressed initramfs, for tools that
	// want it without reading the layout.
	InitramfsPath string
	// InitramfsSize is the compressed initramfs size in bytes.
	InitramfsSize int64
	// Modules are the module files loaded by labos, dependencies first,
	// relative to /lib/modules/<kver>.
	Modules []string
	// Builtin are requested modules the kernel has built in.
	Builtin []string
	// Timings per step.
	Timings map[string]time.Duration
}

// Files in the base image, as Talos's imager expects them
// (machinery constants: /usr/install/<arch>/...).
const (
	ImageDir           = "usr/install/amd64"
	ImageVmlinuz       = ImageDir + "/vmlinuz"
	ImageInitramfs     = ImageDir + "/initramfs.xz"
	ImageSystemdStub   = ImageDir + "/systemd-stub.efi"
	ImageSystemdBoot   = ImageDir + "/systemd-boot.efi"
	AnnotationVersion  = "org.opencontainers.image.version"
	DefaultLabosPkg    = "./lab/labos/cmd/labos"
	trivialInitPackage = "./lab/labbase/trivialinit"
)

// ErrNoAssets means the lab assets are not fetched yet.
var ErrNoAssets = errors.New("lab assets missing (run hack/fetch-lab-assets.sh)")

func (o *Options) setDefaults() error {
	if o.Version == "" {
		return errors.New("options: Version is required")
	}

	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	if o.RepoDir == "" {
		dir, err := FindRepoDir()
		if err != nil {
			return err
		}

		o.RepoDir = dir
	}

	if o.AssetsDir == "" {
		o.AssetsDir = DefaultAssetsDir(o.RepoDir)
	}

	if o.OutDir == "" {
		o.OutDir = filepath.Join(o.RepoDir, "_out", "labbase")
	}

	if o.LabosPackage == "" {
		o.LabosPackage = DefaultLabosPkg
	}

	if o.Modules == nil {
		o.Modules = DefaultModules
	}

	if o.HostBinaries == nil {
		o.HostBinaries = DefaultHostBinaries
	}

	return nil
}

// DefaultAssetsDir is where hack/fetch-lab-assets.sh puts the assets.
func DefaultAssetsDir(repoDir string) string {
	if c := os.Getenv("LABFLEET_CACHE"); c != "" {
		return filepath.Join(c, "lab-assets")
	}

	return filepath.Join(repoDir, "_cache", "lab-assets")
}

// FindRepoDir walks up from the working directory to the directory holding go.mod.
func FindRepoDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding repository: %w", err)
	}

	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}

		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding repository: no go.mod above the working directory")
		}

		dir = parent
	}
}

// Build builds the lab base (or the trivial baseline) and writes it as an
// OCI layout under opts.OutDir.
func Build(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("building lab base: %w", err)
	}

	b := &builder{opts: opts, log: opts.Logger, res: &Result{Timings: map[string]time.Duration{}}}

	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"assets", b.loadAssets},
		{"init", b.buildInit},
		{"modules", b.collectModules},
		{"host-binaries", b.collectHostBinaries},
		{"initramfs", b.writeInitramfs},
		{"layout", b.writeLayout},
	}

	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}

		start := time.Now()

		if err := step.run(ctx); err != nil {
			return nil, fmt.Errorf("building lab base: %s: %w", step.name, err)
		}

		b.res.Timings[step.name] = time.Since(start)
		b.log.Debug("step done", "step", step.name, "took", b.res.Timings[step.name])
	}

	return b.res, nil
}

type builder struct {
	opts   Options
	log    *slog.Logger
	res    *Result
	assets *Assets
	tree   *tree
}
