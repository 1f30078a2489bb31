package build

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/siderolabs/talos/pkg/imager/filemap"
	"github.com/siderolabs/talos/pkg/imager/profile"
	"github.com/siderolabs/talos/pkg/machinery/meta"

	"github.com/labfleet/labfleet/images/base"
)

// Installer image layout (docs/contracts.md "Installer image"): Talos's.
// Talos's imager (pkg/imager, installer output) puts the installer-base's
// first layer first and one artifacts layer after it holding
// usr/install/<arch>/systemd-boot.efi and usr/install/<arch>/vmlinuz.efi
// (the signed UKI; machinery constants SDBootAssetPath, UKIAssetPath).
// labfleet adds only config labels and manifest annotations.
const (
	InstallerUKIPath    = "usr/install/" + base.Arch + "/vmlinuz.efi"
	InstallerSDBootPath = "usr/install/" + base.Arch + "/systemd-boot.efi"
	LabelName           = "org.labfleet.name"
	LabelVersion        = "org.labfleet.version"
	LabelSchematic      = "org.labfleet.schematic"
)

// SourceRepository is where labfleet's source lives (its Go module path),
// the installer's org.opencontainers.image.source.
const SourceRepository = "https://github.com/labfleet/labfleet"

// InstallerInfo is the installer image's metadata.
type InstallerInfo struct {
	Name, Version, SchematicID string
	// Epoch is SOURCE_DATE_EPOCH: the config's created time and the
	// org.opencontainers.image.created annotation.
	Epoch int64
	// Revision is the source revision (git commit) the image was built
	// from; empty leaves org.opencontainers.image.revision out.
	Revision string
	// Source is the source repository URL; empty leaves
	// org.opencontainers.image.source out.
	Source string
	// ResignPE, when set, replaces every EFI binary under usr/install/ in
	// the layers: Talos's imager signs them with signingTime = now, so the
	// builder signs them again with SOURCE_DATE_EPOCH to keep the installer's
	// digest reproducible.
	ResignPE func([]byte) ([]byte, error)
}

// ociLayer presents a gzip layer with the OCI media type: layers read back
// from the imager's docker tarball report Docker's.
type ociLayer struct{ v1.Layer }

func (ociLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// InstallerImage turns the installer Talos's imager wrote (a docker tarball,
// its installer output) into labfleet's installer image: the same layers and
// runtime config, as an OCI image (OCI manifest, config and gzip layer media
// types) with the standard org.opencontainers.image.* annotations, the
// labfleet labels labos reads, and created = SOURCE_DATE_EPOCH instead of the
// imager's wall clock, so OCI tools accept it and rebuilds match.
func InstallerImage(imagerTarball string, info InstallerInfo) (v1.Image, error) {
	src, err := tarball.ImageFromPath(imagerTarball, nil)
	if err != nil {
		return nil, fmt.Errorf("reading imager installer %s: %w", imagerTarball, err)
	}

	srcCfg, err := src.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading imager installer config: %w", err)
	}

	layers, err := src.Layers()
	if err != nil {
		return nil, fmt.Errorf("reading imager installer layers: %w", err)
	}

	if info.ResignPE != nil {
		for i, l := range layers {
			if layers[i], err = resignLayer(l, info.ResignPE); err != nil {
				return nil, err
			}
		}
	}

	return installerImage(srcCfg.Architecture, srcCfg.OS, srcCfg.Config, layers, info)
}

// installerImage assembles labfleet's installer image from the runtime
// config and layers of Talos's installer (the installer-base's config, its
// first layer and the artifacts layer, as Talos's imager puts them
// together).
func installerImage(arch, goos string, runtime v1.Config, layers []v1.Layer, info InstallerInfo) (v1.Image, error) {
	mtime := time.Unix(info.Epoch, 0).UTC()
	cfg := runtime.DeepCopy()

	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}

	cfg.Labels[LabelName] = info.Name
	cfg.Labels[LabelVersion] = info.Version
	cfg.Labels[LabelSchematic] = info.SchematicID

	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)

	img, err := mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: arch, OS: goos, Created: v1.Time{Time: mtime}, Config: *cfg,
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("setting installer config: %w", err)
	}

	for _, l := range layers {
		img, err = mutate.Append(img, mutate.Addendum{Layer: ociLayer{l}, History: v1.History{Created: v1.Time{Time: mtime}}})
		if err != nil {
			return nil, fmt.Errorf("assembling installer image: %w", err)
		}
	}

	ann := map[string]string{
		"org.opencontainers.image.title":   info.Name,
		"org.opencontainers.image.version": info.Version,
		"org.opencontainers.image.created": mtime.Format(time.RFC3339),
	}

	if info.Revision != "" {
		ann["org.opencontainers.image.revision"] = info.Revision
	}

	if info.Source != "" {
		ann["org.opencontainers.image.source"] = info.Source
	}

	annotated, ok := mutate.Annotations(img, ann).(v1.Image)
	if !ok {
		return nil, errors.New("annotating installer image: not an image")
	}

	return annotated, nil
}

// WriteInstallerLayout writes img as the only image of a new OCI layout in
// dir, tagged tag (org.opencontainers.image.ref.name in index.json, which is
// how skopeo's and umoci's dir:tag find it).
func WriteInstallerLayout(dir string, img v1.Image, tag string) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("creating installer layout: %w", err)
	}

	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		return fmt.Errorf("writing installer layout: %w", err)
	}

	return nil
}

// imageSize is what pulling img transfers: manifest, config and layers.
func imageSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, fmt.Errorf("reading installer manifest: %w", err)
	}

	raw, err := img.RawManifest()
	if err != nil {
		return 0, fmt.Errorf("reading installer manifest: %w", err)
	}

	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}

	return size, nil
}

// sourceRevision is the git commit checked out in root, or "" when root is
// not a git checkout (the annotation is then left out, not made up).
func sourceRevision(ctx context.Context, root string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--verify", "HEAD").Output()
	if err != nil {
		return ""
	}

	return strings.TrimSpace(string(out))
}

// imagerProfile is the Talos imager profile of this build for output kind
// (the UKI step's): kernel arguments, embedded config, META values and
// signers.
func (b *builder) imagerProfile(kind profile.OutputKind, ukiSigner profile.SigningKeyAndCertificate, pcrSigner profile.SigningKey) profile.Profile {
	secureBoot := true
	dir := filepath.Join(b.base.Files[base.Kernel].Path, "..")

	prof := profile.Profile{
		Arch:       base.Arch,
		Platform:   "metal",
		SecureBoot: &secureBoot,
		Name:       b.def.Name,
		Version:    b.profileVersion(),
		Customization: profile.CustomizationProfile{
			ExtraKernelArgs:              b.kernelArgs(),
			EmbeddedMachineConfiguration: string(b.baked.MachineConfig),
		},
		Input: profile.Input{
			Kernel:    profile.FileAsset{Path: filepath.Join(dir, base.Kernel)},
			Initramfs: profile.FileAsset{Path: filepath.Join(dir, base.Initramfs)},
			SDStub:    profile.FileAsset{Path: filepath.Join(dir, base.SDStub)},
			SDBoot:    profile.FileAsset{Path: filepath.Join(dir, base.SDBoot)},
			SecureBoot: &profile.SecureBootAssets{
				SecureBootSigner: ukiSigner,
				PCRSigner:        pcrSigner,
			},
		},
		Output: profile.Output{Kind: kind, OutFormat: profile.OutFormatRaw},
	}

	for _, m := range b.def.Schematic.Customization.Meta {
		prof.Customization.MetaContents = append(prof.Customization.MetaContents, meta.Value{Key: m.Key, Value: m.Value})
	}

	return prof
}

// writeInstaller assembles Talos's installer image (pkg/imager's installer
// output: the installer-base's runtime config and first layer, then one
// artifacts layer with systemd-boot and the UKI) from the binaries this build
// already signed: the `uki` output and the systemd-boot the disk carries.
// Running Talos's imager a second time for it (installer output) rebuilt the
// initramfs, the UKI and every signature, only to re-sign and recompress
// them; and the UKI it made was not the one recorded as the `uki` output (it
// adds a "Reset to maintenance mode" boot profile).
func (b *builder) writeInstaller(ctx context.Context) error {
	if b.sdboot == "" || b.installerBaseImg == nil {
		return errors.New("installer: the UKI or resolve step did not run")
	}

	baseCfg, err := b.installerBaseImg.ConfigFile()
	if err != nil {
		return fmt.Errorf("installer.base: reading config: %w", err)
	}

	baseLayers, err := b.installerBaseImg.Layers()
	if err != nil {
		return fmt.Errorf("installer.base: reading layers: %w", err)
	}

	// As Talos's imager: an installer-base of two layers (Talos v1.5+) keeps
	// only its first; the second held the artifacts this image replaces.
	if len(baseLayers) == 2 {
		baseLayers = baseLayers[:1]
	}

	dir := filepath.Join(b.stage, "installer")

	artifacts, err := artifactsLayer(ctx, filepath.Join(dir, "blobs", "sha256"), []filemap.File{
		{ImagePath: InstallerSDBootPath, SourcePath: b.sdboot},
		{ImagePath: InstallerUKIPath, SourcePath: b.uki},
	})
	if err != nil {
		return err
	}

	img, err := installerImage(base.Arch, "linux", baseCfg.Config, append(slices.Clone(baseLayers), artifacts), InstallerInfo{
		Name: b.def.Name, Version: b.def.Version, SchematicID: b.rec.SchematicID, Epoch: b.epoch,
		Revision: sourceRevision(ctx, b.opts.Root), Source: SourceRepository,
	})
	if err != nil {
		return err
	}

	if err := WriteInstallerLayout(dir, img, b.def.Version); err != nil {
		return err
	}

	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("installer digest: %w", err)
	}

	size, err := imageSize(img)
	if err != nil {
		return err
	}

	ref := ""

	if repo := b.def.Installer.Repository; repo != "" {
		// TLS unless the registry is listed insecure (--insecure-registry):
		// a pushed release must not travel in clear text by default.
		tag, err := name.NewTag(repo+":"+b.def.Version, b.opts.Registry.NameOptions(repo, false)...)
		if err != nil {
			return fmt.Errorf("installer.repository %q: %w", repo, err)
		}

		if err := remote.Write(tag, img, b.opts.Registry.RemoteOptions(ctx)...); err != nil {
			return fmt.Errorf("pushing installer to %s: %w", tag, err)
		}

		ref = tag.Context().Digest(digest.String()).String()
	}

	// The record's installer entry names the image by its manifest digest.
	// Size is what a pull transfers (manifest, config, layers).
	out := installerOutput(digest.String(), ref)
	out.Size = size

	b.mu.Lock()
	b.rec.Outputs = append(b.rec.Outputs, out)
	b.mu.Unlock()

	return nil
}
