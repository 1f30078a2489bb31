package upgrade_test

import (
	"archive/tar"
	"bytes"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
	"github.com/labfleet/labfleet/lab/labos/upgrade"
)

func tarOf(entries ...*tar.Header) []byte {
	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		_ = tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			_, _ = tw.Write(bytes.Repeat([]byte("U"), int(h.Size)))
		}
	}

	_ = tw.Close()

	return buf.Bytes()
}

// FuzzFromImage feeds installer images with arbitrary labels and layer
// bytes: FromImage must not panic, and what it accepts has labels safe for
// the ESP and a bounded UKI.
func FuzzFromImage(f *testing.F) {
	good := tarOf(&tar.Header{Name: "labfleet/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: upgrade.UKIPath, Typeflag: tar.TypeReg, Mode: 0o644, Size: 16})
	f.Add("lab", "1.1.0", good)
	f.Add("lab", "x/../../../../outside/pwned", good)
	f.Add("lab\nsecure-boot-enroll force", "1.1.0", good)
	f.Add("lab", "1.1.0", tarOf(&tar.Header{Name: "./" + upgrade.UKIPath, Typeflag: tar.TypeReg, Mode: 0o644, Size: 3}))
	f.Add("lab", "1.1.0", tarOf(&tar.Header{Name: upgrade.UKIPath, Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}))
	f.Add("lab", "1.1.0", good[:700])
	f.Add("", "", []byte{})

	f.Fuzz(func(t *testing.T, name, version string, layer []byte) {
		img, err := mutate.AppendLayers(empty.Image, static.NewLayer(layer, types.OCIUncompressedLayer))
		if err != nil {
			t.Skip()
		}

		cf, err := img.ConfigFile()
		if err != nil {
			t.Skip()
		}

		cf = cf.DeepCopy()
		cf.Config.Labels = map[string]string{upgrade.LabelName: name, upgrade.LabelVersion: version}

		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Skip()
		}

		got, err := upgrade.FromImage(img)
		if err != nil {
			return
		}

		if bootentry.ValidateLabel("name", got.Name) != nil || bootentry.ValidateLabel("version", got.Version) != nil {
			t.Fatalf("accepted unsafe labels %q %q", got.Name, got.Version)
		}

		if got.UKI == nil || len(got.UKI) > upgrade.MaxUKISize {
			t.Fatalf("accepted a UKI of %d bytes", len(got.UKI))
		}
	})
}
