package build

import (
	"context"
	"fmt"
	"path/filepath"

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

	return nil
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
