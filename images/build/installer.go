package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

	mtime := time.Unix(info.Epoch, 0).UTC()
	cfg := srcCfg.Config.DeepCopy()

	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}

	cfg.Labels[LabelName] = info.Name
	cfg.Labels[LabelVersion] = info.Version
	cfg.Labels[LabelSchematic] = info.SchematicID

	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)

	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: srcCfg.Architecture, OS: srcCfg.OS, Created: v1.Time{Time: mtime}, Config: *cfg,
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("setting installer config: %w", err)
	}

	for _, l := range layers {
		if info.ResignPE != nil {
			if l, err = resignLayer(l, info.ResignPE); err != nil {
				return nil, err
			}
		}

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
// (the UKI step's and the installer step's): the same kernel arguments,
// embedded config, META values and signers, so both carry the same boot
// configuration.
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

func (b *builder) writeInstaller(ctx context.Context) error {
	if b.signing == nil {
		return errors.New("installer: the UKI step did not start the signers")
	}

	ukiSigner := profile.SigningKeyAndCertificate{SignerAddress: b.signing.ukiAddr}
	pcrSigner := profile.SigningKey{SignerAddress: b.signing.pcrAddr}

	prof := b.imagerProfile(profile.OutKindInstaller, ukiSigner, pcrSigner)

	// Talos's imager pulls the installer-base itself; it gets the copy
	// resolved (and digest-checked) here, as a local layout, so the image
	// assembled is the one recorded.
	prof.Input.BaseInstaller = profile.ContainerAsset{
		ImageRef: "installer-base:" + b.def.TalosVersion, // names the tarball's tag only
		OCIPath:  b.installerBase,
	}

	outDir := filepath.Join(b.work, "imager-installer")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("creating imager output dir: %w", err)
	}

	tarPath, err := b.runImager(ctx, prof, outDir)
	if err != nil {
		return err
	}

	img, err := InstallerImage(tarPath, InstallerInfo{
		Name: b.def.Name, Version: b.def.Version, SchematicID: b.rec.SchematicID, Epoch: b.epoch,
		Revision: sourceRevision(ctx, b.opts.Root), Source: SourceRepository,
		ResignPE: b.resignPE,
	})
	if err != nil {
		return err
	}

	if err := WriteInstallerLayout(filepath.Join(b.stage, "installer"), img, b.def.Version); err != nil {
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
	b.rec.Outputs = append(b.rec.Outputs, out)

	return nil
}
