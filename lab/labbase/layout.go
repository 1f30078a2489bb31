package labbase

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// epoch is the timestamp of every file and of the image itself: a build's
// date is not one of its inputs.
var epoch = time.Unix(0, 0).UTC()

type layerFile struct {
	name string
	data []byte
	mode int64
}

// layerTar renders files (plus their parent directories) as a tar stream in
// sorted order with fixed metadata.
func layerTar(files []layerFile) ([]byte, error) {
	entries := map[string]*tar.Header{}

	for _, f := range files {
		for d := filepath.Dir(f.name); d != "." && d != "/"; d = filepath.Dir(d) {
			entries[d+"/"] = &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}
		}

		entries[f.name] = &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data))}
	}

	data := map[string][]byte{}
	for _, f := range files {
		data[f.name] = f.data
	}

	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}

	sort.Strings(names)

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)

	for _, n := range names {
		h := entries[n]
		h.ModTime = epoch
		h.Format = tar.FormatPAX
		h.Uname, h.Gname = "", ""

		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}

		if !strings.HasSuffix(n, "/") {
			if _, err := tw.Write(data[n]); err != nil {
				return nil, err
			}
		}
	}

	if err := tw.Close(); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}

func (b *builder) writeLayout(context.Context) error {
	var files []layerFile

	for _, f := range []struct{ name, src string }{
		{ImageVmlinuz, b.assets.Vmlinuz},
		{ImageInitramfs, b.res.InitramfsPath},
		{ImageSystemdStub, b.assets.SystemdStub},
		{ImageSystemdBoot, b.assets.SystemdBoot},
	} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return err
		}

		files = append(files, layerFile{name: f.name, data: data, mode: 0o644})
	}

	tarData, err := layerTar(files)
	if err != nil {
		return fmt.Errorf("writing layer: %w", err)
	}

	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarData)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("creating layer: %w", err)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)

	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "labfleet labbase " + b.opts.Version,
			Comment:   "kernel " + b.assets.KernelRelease,
		},
	})
	if err != nil {
		return fmt.Errorf("appending layer: %w", err)
	}

	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}

	cfg = cfg.DeepCopy()
	cfg.Architecture = "amd64"
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Labels = map[string]string{
		AnnotationVersion:             b.opts.Version,
		"org.labfleet.kernel.release": b.assets.KernelRelease,
		"org.labfleet.labbase.kind":   b.kind(),
	}

	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return fmt.Errorf("setting config: %w", err)
	}

	annotations := map[string]string{AnnotationVersion: b.opts.Version}
	img = mutate.Annotations(img, annotations).(v1.Image)

	dir := filepath.Join(b.opts.OutDir, "oci")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}

	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("writing layout: %w", err)
	}

	if err := p.AppendImage(img, layout.WithAnnotations(annotations)); err != nil {
		return fmt.Errorf("writing layout: %w", err)
	}

	d, err := img.Digest()
	if err != nil {
		return err
	}

	b.res.LayoutDir = dir
	b.res.Digest = d.String()
	b.log.Info("layout written", "dir", dir, "digest", b.res.Digest)

	return b.writeInstallerBase()
}

// InstallerBaseStandIn is /usr/bin/installer of the lab installer-base. The
// lab installs upgrades with labos, which only reads the UKI from the
// installer image; the binary exists so the image has Talos's
// installer-base layout, and says what it is if anyone runs it.
const InstallerBaseStandIn = "#!/bin/sh\necho \"labfleet lab installer-base: a stand-in without the Talos installer (README: Stand-ins)\" >&2\nexit 1\n"

// writeInstallerBase writes OutDir/installer-base: an OCI layout with one
// linux/amd64 image in the layout of Talos's installer-base (its
// Dockerfile's installer-base target: one squashed layer with
// /usr/bin/installer, entrypoint /bin/installer, label
// alpha.talos.dev/version), from which imagectl assembles lab installers
// with Talos's imager as it does from ghcr.io/siderolabs/installer-base.
func (b *builder) writeInstallerBase() error {
	tarData, err := layerTar([]layerFile{{name: "usr/bin/installer", data: []byte(InstallerBaseStandIn), mode: 0o755}})
	if err != nil {
		return fmt.Errorf("writing installer-base layer: %w", err)
	}

	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarData)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("creating installer-base layer: %w", err)
	}

	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)

	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "labfleet labbase " + b.opts.Version}})
	if err != nil {
		return fmt.Errorf("appending installer-base layer: %w", err)
	}

	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}

	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = []string{"/bin/installer"}
	cfg.Config.Env = []string{"VERSION=" + InstallerBaseTalosVersion}
	cfg.Config.Labels = map[string]string{"alpha.talos.dev/version": InstallerBaseTalosVersion, AnnotationVersion: b.opts.Version}

	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return fmt.Errorf("setting installer-base config: %w", err)
	}

	dir := filepath.Join(b.opts.OutDir, "installer-base")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}

	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("writing installer-base layout: %w", err)
	}

	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		return fmt.Errorf("writing installer-base layout: %w", err)
	}

	b.res.InstallerBaseDir = dir

	return nil
}

// InstallerBaseTalosVersion is the Talos version the lab installer-base
// stands in for (its alpha.talos.dev/version label).
const InstallerBaseTalosVersion = "v1.14.1"

func (b *builder) kind() string {
	if b.opts.TrivialInit {
		return "trivial"
	}

	return "labos"
}
