package build_test

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/opencontainers/image-spec/schema"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/siderolabs/talos/pkg/imager/filemap"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
	"github.com/labfleet/labfleet/lab/labos/upgrade"
)

const installerTag = "1.0.0" // the fixture's version

// installerLayout builds the fixture's installer (Talos's imager installer
// output from the test installer-base) in a git checkout, so every standard
// annotation is set, and returns the layout, the fixture and the checkout's
// revision.
func installerLayout(t *testing.T) (dir string, f *fixture, revision string) {
	t.Helper()

	f = newFixture(t)
	f.def.Outputs = []string{spec.OutputUKI, spec.OutputInstaller}

	for _, args := range [][]string{{"init", "-q"}, {"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "x"}} {
		out, err := exec.Command("git", append([]string{"-C", f.root}, args...)...).CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
	}

	rev, err := exec.Command("git", "-C", f.root, "rev-parse", "HEAD").Output()
	require.NoError(t, err)

	res, err := f.build(t, filepath.Join(f.root, "_out"), true)
	require.NoError(t, err)

	return filepath.Join(res.Dir, "installer"), f, strings.TrimSpace(string(rev))
}

func readJSON(t *testing.T, path string, v any) []byte {
	t.Helper()

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, v))

	return data
}

func blobPath(dir string, d ocispec.Descriptor) string {
	return filepath.Join(dir, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded())
}

// The layout, index, manifest and config are validated against the OCI image
// spec's own JSON schemas, and the media types and annotations are OCI's.
func TestInstallerImageIsOCI(t *testing.T) {
	dir, f, revision := installerLayout(t)

	hdr, err := os.ReadFile(filepath.Join(dir, "oci-layout"))
	require.NoError(t, err)
	require.NoError(t, schema.ValidatorMediaTypeLayoutHeader.Validate(bytes.NewReader(hdr)))

	var idx ocispec.Index
	raw := readJSON(t, filepath.Join(dir, "index.json"), &idx)
	require.NoError(t, schema.ValidatorMediaTypeImageIndex.Validate(bytes.NewReader(raw)))
	require.Len(t, idx.Manifests, 1)
	require.Equal(t, ocispec.MediaTypeImageManifest, idx.Manifests[0].MediaType)
	require.Equal(t, installerTag, idx.Manifests[0].Annotations[ocispec.AnnotationRefName])

	var m ocispec.Manifest
	raw = readJSON(t, blobPath(dir, idx.Manifests[0]), &m)
	require.NoError(t, schema.ValidatorMediaTypeManifest.Validate(bytes.NewReader(raw)))
	require.Equal(t, ocispec.MediaTypeImageManifest, m.MediaType)
	require.Equal(t, ocispec.MediaTypeImageConfig, m.Config.MediaType)
	// Talos's imager: the installer-base's layer, then the artifacts layer.
	require.Len(t, m.Layers, 2)

	for _, l := range m.Layers {
		require.Equal(t, ocispec.MediaTypeImageLayerGzip, l.MediaType)
	}

	baseLayers, err := f.installerBase.Layers()
	require.NoError(t, err)
	baseLayer, err := baseLayers[0].Digest()
	require.NoError(t, err)
	require.Equal(t, baseLayer.String(), m.Layers[0].Digest.String(), "the installer-base layer is carried unchanged")

	require.Equal(t, map[string]string{
		ocispec.AnnotationVersion:  installerTag,
		ocispec.AnnotationRevision: revision,
		ocispec.AnnotationSource:   "https://github.com/labfleet/labfleet",
		ocispec.AnnotationCreated:  "2023-11-14T22:13:20Z", // SOURCE_DATE_EPOCH 1700000000
		ocispec.AnnotationTitle:    "edge",
	}, m.Annotations)

	var cfg ocispec.Image
	raw = readJSON(t, blobPath(dir, m.Config), &cfg)
	require.NoError(t, schema.ValidatorMediaTypeImageConfig.Validate(bytes.NewReader(raw)))
	require.Equal(t, "amd64", cfg.Architecture)
	require.Equal(t, "2023-11-14T22:13:20Z", cfg.Created.UTC().Format(time.RFC3339))
	require.Equal(t, installerTag, cfg.Config.Labels[build.LabelVersion])
	// the installer-base's runtime config is kept: Talos runs /bin/installer
	require.Equal(t, []string{"/bin/installer"}, cfg.Config.Entrypoint)
	require.Equal(t, "v1.14.1", cfg.Config.Labels["alpha.talos.dev/version"])

	p, err := layout.FromPath(dir)
	require.NoError(t, err)
	ii, err := p.ImageIndex()
	require.NoError(t, err)
	h, err := v1.NewHash(idx.Manifests[0].Digest.String())
	require.NoError(t, err)
	img, err := ii.Image(h)
	require.NoError(t, err)

	files := flatten(t, img)
	require.Equal(t, installerBaseBinary, files["usr/bin/installer"])

	// The artifacts Talos's installer writes to the ESP, signed with the
	// keys folder's db key.
	certPEM, err := os.ReadFile(filepath.Join(f.keys, keys.UKISigningCertFile))
	require.NoError(t, err)
	blk, _ := pem.Decode(certPEM)
	require.NotNil(t, blk)
	cert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)

	for _, path := range []string{build.InstallerUKIPath, build.InstallerSDBootPath} {
		require.Contains(t, files, path)
		require.NoError(t, upgrade.Trust{DB: []*x509.Certificate{cert}}.Verify(files[path]), "%s signed by db", path)
	}

	// What labos reads for an upgrade (lab/labos/upgrade): the same UKI.
	up, err := upgrade.FromImage(img)
	require.NoError(t, err)
	require.Equal(t, files[build.InstallerUKIPath], up.UKI)
	require.Equal(t, "edge", up.Name)
	require.Equal(t, installerTag, up.Version)
}

// flatten reads an image's filesystem (later layers win) into memory.
func flatten(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()

	rc := mutate.Extract(img)
	defer rc.Close() //nolint:errcheck

	files := map[string][]byte{}
	tr := tar.NewReader(rc)

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}

		require.NoError(t, err)

		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			require.NoError(t, err)
			files[strings.TrimPrefix(h.Name, "/")] = data
		}
	}
}

// Real OCI clients resolve the tag and read the image.
func TestInstallerLayoutAcceptedByOCITools(t *testing.T) {
	dir, _, _ := installerLayout(t)

	for _, tc := range []struct {
		tool string
		args []string
	}{
		{"skopeo", []string{"inspect", "oci:" + dir + ":" + installerTag}},
		{"umoci", []string{"stat", "--image", dir + ":" + installerTag}},
	} {
		t.Run(tc.tool, func(t *testing.T) {
			if _, err := exec.LookPath(tc.tool); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("%s missing: run hack/install-deps.sh", tc.tool)
				}

				t.Skipf("%s not installed (hack/install-deps.sh installs it)", tc.tool)
			}

			out, err := exec.Command(tc.tool, tc.args...).CombinedOutput()
			require.NoError(t, err, "%s %v:\n%s", tc.tool, tc.args, out)
		})
	}
}

// checkInstallerRecorded: build.json names the installer by its manifest
// digest and records what a pull transfers (manifest + config + layers);
// the layout tags that manifest with the image version.
func checkInstallerRecorded(t *testing.T, dir string, rec *record.Record) {
	t.Helper()

	inst, ok := rec.Output(spec.OutputInstaller)
	require.True(t, ok)

	p, err := layout.FromPath(filepath.Join(dir, inst.Path))
	require.NoError(t, err)
	ii, err := p.ImageIndex()
	require.NoError(t, err)
	im, err := ii.IndexManifest()
	require.NoError(t, err)
	require.Len(t, im.Manifests, 1)
	require.Equal(t, "sha256:"+inst.SHA256, im.Manifests[0].Digest.String())
	require.Equal(t, rec.Version, im.Manifests[0].Annotations[ocispec.AnnotationRefName])

	img, err := ii.Image(im.Manifests[0].Digest)
	require.NoError(t, err)
	m, err := img.Manifest()
	require.NoError(t, err)
	require.Equal(t, ocispec.MediaTypeImageManifest, string(m.MediaType))

	want := im.Manifests[0].Size + m.Config.Size
	for _, l := range m.Layers {
		want += l.Size
	}

	require.Equal(t, want, inst.Size, "installer size in build.json")
}

// TestInstallerCarriesTheBuiltUKI: the installer's EFI binaries are the ones
// this build already made, not a second Talos imager run's: vmlinuz.efi is
// the `uki` output byte for byte (what build.json records and the disk
// boots) and systemd-boot.efi is the signed systemd-boot on the disk's ESP.
// The artifacts layer is still Talos's: byte for byte what Talos's own
// filemap.Layer (the imager's installer output) makes of those two files.
func TestInstallerCarriesTheBuiltUKI(t *testing.T) {
	f := newFixture(t)

	res, err := f.build(t, filepath.Join(f.root, "_out"), true)
	require.NoError(t, err)

	uki, err := os.ReadFile(filepath.Join(res.Dir, "edge.efi"))
	require.NoError(t, err)

	d, err := diskfs.Open(filepath.Join(res.Dir, "disk.raw"), diskfs.WithOpenMode(diskfs.ReadOnly))
	require.NoError(t, err)

	defer d.Close() //nolint:errcheck

	esp, err := d.GetFilesystem(1)
	require.NoError(t, err)
	fh, err := esp.OpenFile("/EFI/BOOT/BOOTX64.EFI", os.O_RDONLY)
	require.NoError(t, err)
	sdboot, err := io.ReadAll(fh)
	require.NoError(t, err)

	p, err := layout.FromPath(filepath.Join(res.Dir, "installer"))
	require.NoError(t, err)
	ii, err := p.ImageIndex()
	require.NoError(t, err)
	im, err := ii.IndexManifest()
	require.NoError(t, err)
	img, err := ii.Image(im.Manifests[0].Digest)
	require.NoError(t, err)

	files := flatten(t, img)
	// bytes.Equal: a failing require.Equal would print two 30 MB hex dumps.
	require.True(t, bytes.Equal(uki, files[build.InstallerUKIPath]), "the installer's UKI (%d bytes) is not the uki output (%d bytes)", len(files[build.InstallerUKIPath]), len(uki))
	require.True(t, bytes.Equal(sdboot, files[build.InstallerSDBootPath]), "the installer's systemd-boot is not the disk's")

	src := t.TempDir()
	for name, data := range map[string][]byte{"uki": uki, "sdboot": sdboot} {
		require.NoError(t, os.WriteFile(filepath.Join(src, name), data, 0o644))
	}

	want, err := filemap.Layer(t.TempDir(), []filemap.File{
		{ImagePath: build.InstallerUKIPath, SourcePath: filepath.Join(src, "uki")},
		{ImagePath: build.InstallerSDBootPath, SourcePath: filepath.Join(src, "sdboot")},
	})
	require.NoError(t, err)

	layers, err := img.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 2)

	for _, h := range []func(v1.Layer) (v1.Hash, error){v1.Layer.Digest, v1.Layer.DiffID} {
		wantH, err := h(want)
		require.NoError(t, err)
		got, err := h(layers[1])
		require.NoError(t, err)
		require.Equal(t, wantH, got, "the artifacts layer differs from Talos's filemap.Layer of the same files")
	}
}
