package build_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/image-spec/schema"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

const installerTag = "1.2.3"

// installerLayout writes an installer image for a stand-in UKI into an OCI layout.
func installerLayout(t *testing.T) (dir string, ukiData []byte) {
	t.Helper()

	work := t.TempDir()
	ukiData = []byte("MZ not a real UKI")
	uki := filepath.Join(work, "uki.efi")
	require.NoError(t, os.WriteFile(uki, ukiData, 0o644))

	img, err := build.InstallerImage(uki, []byte(`{"name":"edge"}`+"\n"), build.InstallerInfo{
		Name: "edge", Version: installerTag, SchematicID: "abc", Epoch: 1700000000,
		Revision: "0123456789abcdef0123456789abcdef01234567", Source: "https://github.com/labfleet/labfleet",
	}, work)
	require.NoError(t, err)

	dir = filepath.Join(work, "oci")
	require.NoError(t, build.WriteInstallerLayout(dir, img, installerTag))

	return dir, ukiData
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
	dir, ukiData := installerLayout(t)

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
	require.Len(t, m.Layers, 1)
	require.Equal(t, ocispec.MediaTypeImageLayerGzip, m.Layers[0].MediaType)
	require.Equal(t, map[string]string{
		ocispec.AnnotationVersion:  installerTag,
		ocispec.AnnotationRevision: "0123456789abcdef0123456789abcdef01234567",
		ocispec.AnnotationSource:   "https://github.com/labfleet/labfleet",
		ocispec.AnnotationCreated:  "2023-11-14T22:13:20Z", // SOURCE_DATE_EPOCH 1700000000
		ocispec.AnnotationTitle:    "edge",
	}, m.Annotations)

	var cfg ocispec.Image
	raw = readJSON(t, blobPath(dir, m.Config), &cfg)
	require.NoError(t, schema.ValidatorMediaTypeImageConfig.Validate(bytes.NewReader(raw)))
	require.Equal(t, "amd64", cfg.Architecture)
	require.Equal(t, installerTag, cfg.Config.Labels[build.LabelVersion])

	// What labos reads (lab/labos/upgrade): labfleet/uki.efi in the layer.
	p, err := layout.FromPath(dir)
	require.NoError(t, err)
	ii, err := p.ImageIndex()
	require.NoError(t, err)
	im, err := ii.IndexManifest()
	require.NoError(t, err)
	got, err := ii.Image(im.Manifests[0].Digest)
	require.NoError(t, err)
	layers, err := got.Layers()
	require.NoError(t, err)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)

	defer rc.Close() //nolint:errcheck

	tr := tar.NewReader(rc)
	found := false

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		require.NoError(t, err)

		if h.Name == build.InstallerUKIPath {
			data, err := io.ReadAll(tr)
			require.NoError(t, err)
			require.Equal(t, ukiData, data)

			found = true
		}
	}

	require.True(t, found, "%s in the layer", build.InstallerUKIPath)
}

// Real OCI clients resolve the tag and read the image.
func TestInstallerLayoutAcceptedByOCITools(t *testing.T) {
	dir, _ := installerLayout(t)

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
