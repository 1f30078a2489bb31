package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/siderolabs/talos/pkg/imager"
	"github.com/siderolabs/talos/pkg/imager/profile"
	"github.com/siderolabs/talos/pkg/reporter"
	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/spec"
)

// imagerMu serialises imager runs: the imager reads SOURCE_DATE_EPOCH from the
// environment and writes its progress to os.Stderr, both process-wide.
var imagerMu sync.Mutex

// profileVersion is the version the imager stamps into .osrel. It starts with
// the Talos version so the imager applies that generation's rules (its quirks
// look only at major.minor.patch), and carries the image version after it so
// systemd-boot orders our boot entries by image version.
func (b *builder) profileVersion() string {
	return b.def.TalosVersion + "-" + b.def.Version
}

// KernelArgs are the arguments every labfleet image carries besides the
// schematic's: the image identity, so a node (labos) can report it, and the
// sha256 of our db certificate, so a node seals STATE only when that
// certificate is enrolled (docs/contracts.md: kernel command line).
func (b *builder) kernelArgs() []string {
	args := append([]string{}, b.def.Schematic.Customization.ExtraKernelArgs...)
	if b.def.SideroLink != nil {
		args = append(args, b.def.SideroLink.KernelArgs()...)
	}

	return append(args, "labos.version="+b.def.Version, "labos.name="+b.def.Name, DBCmdlineParam+"="+b.keys.DBCertSHA256)
}

// DBCmdlineParam is the kernel command line parameter carrying the lowercase
// hex sha256 of the DER of the db certificate (uki-signing-cert.pem).
const DBCmdlineParam = "labos.db"

func (b *builder) buildUKI(ctx context.Context) error {
	if b.signing == nil {
		return errors.New("UKI: the signers were not started")
	}

	ukiSigner := profile.SigningKeyAndCertificate{SignerAddress: b.signing.ukiAddr}
	pcrSigner := profile.SigningKey{SignerAddress: b.signing.pcrAddr}

	prof := b.imagerProfile(profile.OutKindUKI, ukiSigner, pcrSigner)

	outDir := filepath.Join(b.work, "imager-out")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("creating imager output dir: %w", err)
	}

	out, err := b.runImager(ctx, prof, outDir)
	if err != nil {
		return err
	}

	// The imager's Authenticode signature carries signingTime = now; the
	// UKI is signed again, by the same signer, with SOURCE_DATE_EPOCH
	// (sign.go). The .pcrsig inside is PKCS#1 v1.5, already deterministic.
	// The imager's file (created 0666 &^ umask, as os.Create would) is
	// moved into the staging folder and signed there, in place.
	b.uki = filepath.Join(b.stage, b.def.Name+".efi")
	if err := moveFile(out, b.uki); err != nil {
		return fmt.Errorf("moving UKI into the staging folder: %w", err)
	}

	if err := signPEInPlace(b.uki, b.signing.uki, b.signing.ukiCert, b.signingTime()); err != nil {
		return fmt.Errorf("signing UKI: %w", err)
	}

	if b.cmdline, err = readCmdline(b.uki); err != nil {
		return err
	}

	b.rec.Cmdline = b.cmdline

	if err := b.addOutput("uki", b.uki, ""); err != nil {
		return err
	}

	// systemd-boot, signed once here for both the disk's ESP and the
	// installer (which may be written at the same time).
	if b.def.Wants(spec.OutputDisk) || b.def.Wants(spec.OutputInstaller) {
		sdboot := filepath.Join(b.work, "BOOTX64.EFI")
		if err := b.signPE(b.base.Files[base.SDBoot].Path, sdboot); err != nil {
			return fmt.Errorf("signing systemd-boot: %w", err)
		}

		b.sdboot = sdboot
	}

	return b.writeBootstrapConfig()
}

// BootstrapConfigKind is the build record's output kind of the embedded
// bootstrap configuration, written beside the UKI as <name>.bootstrap.yaml:
// labctl and the tests read the add-ons' manifests from it to make the
// node configs they deliver (machineconfig.NodeConfig). It holds no secret.
const BootstrapConfigKind = "bootstrap-config"

func (b *builder) writeBootstrapConfig() error {
	p := filepath.Join(b.stage, b.def.Name+".bootstrap.yaml")
	if err := os.WriteFile(p, b.baked.MachineConfig, 0o644); err != nil {
		return fmt.Errorf("writing bootstrap config: %w", err)
	}

	return b.addOutput(BootstrapConfigKind, p, "")
}

func (b *builder) runImager(ctx context.Context, prof profile.Profile, outDir string) (string, error) {
	imagerMu.Lock()
	defer imagerMu.Unlock()

	restoreEnv := setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(b.epoch, 10))
	defer restoreEnv()

	// The shims come first: a tools folder holding cpio or zstd must not
	// bypass them (they run the tool the imager would have found).
	tools := os.Getenv("PATH")
	if b.opts.ToolsPath != "" {
		tools = b.opts.ToolsPath + string(os.PathListSeparator) + tools
	}

	shims, err := writeShims(filepath.Join(b.work, "shims"), tools)
	if err != nil {
		return "", err
	}

	path := shims + string(os.PathListSeparator) + tools

	defer setenv("PATH", path)()

	restoreStderr, err := redirectStderr(b.opts.ImagerLog)
	if err != nil {
		return "", err
	}
	defer restoreStderr()

	img, err := imager.New(prof)
	if err != nil {
		return "", fmt.Errorf("creating imager: %w", err)
	}

	out, err := img.Execute(ctx, outDir, reporter.New(reporter.WithOutputMode(reporter.OutputModePlain)))
	if err != nil {
		return "", fmt.Errorf("talos imager: %w", err)
	}

	return out, nil
}

func setenv(k, v string) func() {
	old, had := os.LookupEnv(k)
	os.Setenv(k, v) //nolint:errcheck

	return func() {
		if had {
			os.Setenv(k, old) //nolint:errcheck
		} else {
			os.Unsetenv(k) //nolint:errcheck
		}
	}
}

// redirectStderr sends os.Stderr to w until the returned func is called: the
// imager library prints its profile and progress there unconditionally.
func redirectStderr(w io.Writer) (func(), error) {
	r, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("capturing imager output: %w", err)
	}

	old := os.Stderr
	os.Stderr = pw
	done := make(chan struct{})

	go func() {
		io.Copy(w, r) //nolint:errcheck
		close(done)
	}()

	return func() {
		os.Stderr = old
		pw.Close() //nolint:errcheck
		<-done
		r.Close() //nolint:errcheck
	}, nil
}

// moveFile renames src to dst, or copies it when they are on different
// file systems (the temp folder may be a tmpfs).
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if !errors.Is(err, unix.EXDEV) {
		return err
	}

	if err := cloneFile(src, dst); err != nil {
		return err
	}

	return os.Remove(src)
}
