package build

import (
	"context"
	"fmt"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/labfleet/labfleet/extensions/machineconfig"
	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

func (b *builder) baseSource() base.Source {
	return base.Source{
		Image:    b.def.Base.Image,
		Layout:   spec.ResolvePath(b.opts.Root, b.def.Base.Layout),
		Digest:   b.def.Base.Digest,
		Insecure: b.def.Base.Insecure,
		Registry: b.opts.Registry,
	}
}

func (b *builder) resolveBase(ctx context.Context) error {
	res, err := base.Resolve(ctx, b.baseSource(), filepath.Join(b.work, "base"))
	if err != nil {
		return err
	}

	b.base = res
	b.rec.Inputs = append(b.rec.Inputs, record.Input{Name: "base", Ref: res.Ref, Digest: res.Digest})

	for _, name := range base.Inputs {
		f := res.Files[name]
		b.rec.Inputs = append(b.rec.Inputs, record.Input{Name: "base/" + name, Digest: "sha256:" + f.SHA256, Size: f.Size})
	}

	if b.def.Wants(spec.OutputInstaller) {
		return b.resolveInstallerBase(ctx)
	}

	return nil
}

func (b *builder) installerBaseSource() base.Source {
	ib := b.def.Installer.Base

	return base.Source{
		Image:    ib.Image,
		Layout:   spec.ResolvePath(b.opts.Root, ib.Layout),
		Digest:   ib.Digest,
		Insecure: ib.Insecure,
		Registry: b.opts.Registry,
	}
}

// describeInstallerBase finds the installer-base image (linux/amd64) and
// checks the definition's digest pin.
func (b *builder) describeInstallerBase(ctx context.Context) (string, v1.Image, v1.Hash, error) {
	src := b.installerBaseSource()

	ref, img, err := base.Describe(ctx, src)
	if err != nil {
		return "", nil, v1.Hash{}, fmt.Errorf("installer.base: %w", err)
	}

	digest, err := img.Digest()
	if err != nil {
		return "", nil, v1.Hash{}, fmt.Errorf("installer.base: computing digest: %w", err)
	}

	if src.Digest != "" && src.Digest != digest.String() {
		return "", nil, v1.Hash{}, fmt.Errorf("installer.base: %w: %s resolved to %s, definition pins %s; if the new installer-base is intended, update installer.base.digest", base.ErrDigestMismatch, ref, digest, src.Digest)
	}

	return ref, img, digest, nil
}

// resolveInstallerBase pins the installer-base by digest and keeps the
// image for the installer step, which assembles the installer from exactly
// the image recorded in build.json.
func (b *builder) resolveInstallerBase(ctx context.Context) error {
	ref, img, digest, err := b.describeInstallerBase(ctx)
	if err != nil {
		return err
	}

	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("installer.base: reading config of %s: %w", ref, err)
	}

	if cf.Architecture != base.Arch || cf.OS != "linux" {
		return fmt.Errorf("installer.base: %s is %s/%s, need linux/%s", ref, cf.OS, cf.Architecture, base.Arch)
	}

	b.installerBaseImg = img
	b.rec.Inputs = append(b.rec.Inputs, record.Input{Name: "installer-base", Ref: ref, Digest: digest.String()})

	return nil
}

// installerBaseKey is the cache key's installer-base line: its digest, so a
// moved tag or a rebuilt lab installer-base rebuilds the installer.
func (b *builder) installerBaseKey(ctx context.Context) (string, error) {
	if !b.def.Wants(spec.OutputInstaller) {
		return "", nil
	}

	_, _, digest, err := b.describeInstallerBase(ctx)
	if err != nil {
		return "", err
	}

	return "installer-base " + digest.String() + "\n", nil
}

func (b *builder) bake(ctx context.Context) error {
	baked, err := b.opts.Baker.Bake(ctx, BakeRequest{Def: b.def, WorkDir: filepath.Join(b.work, "bake")})
	if err != nil {
		return err
	}

	// The UKI ends up on the unencrypted ESP, on disks and in installer
	// images: whoever holds one must learn no key of the cluster.
	if err := machineconfig.CheckNoSecrets(baked.MachineConfig); err != nil {
		return fmt.Errorf("refusing to embed the machine config: %w", err)
	}

	b.baked = baked
	b.rec.Addons = baked.Addons

	return nil
}
