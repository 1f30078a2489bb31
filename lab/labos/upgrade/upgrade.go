// Package upgrade installs a new UKI from an installer image: pull it from
// a registry, find labfleet/uki.efi, verify its Authenticode signature
// against the certificates enrolled in db BEFORE anything touches the ESP,
// then write it as a boot-counted entry so systemd-boot tries it next and
// falls back if it never gets blessed.
package upgrade

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/foxboron/go-uefi/authenticode"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
)

// Installer image layout (docs/contracts.md "Installer image").
const (
	UKIPath      = "labfleet/uki.efi"
	LabelName    = "org.labfleet.name"
	LabelVersion = "org.labfleet.version"
)

// ErrSignature means the UKI is not signed by any db certificate.
var ErrSignature = errors.New("UKI is not signed by a certificate enrolled in db")

// Image is a pulled installer image's payload.
type Image struct {
	Name    string
	Version string
	Digest  string
	UKI     []byte
}

// Pull fetches ref and extracts the UKI. Registries in insecure are
// reached over plain HTTP (the lab registry at 10.0.2.100:5000).
func Pull(ctx context.Context, ref string, insecure []string) (*Image, error) {
	var opts []name.Option

	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parsing image reference %q: %w", ref, err)
	}

	if slices.Contains(insecure, r.Context().RegistryStr()) {
		opts = append(opts, name.Insecure)

		if r, err = name.ParseReference(ref, opts...); err != nil {
			return nil, fmt.Errorf("parsing image reference %q: %w", ref, err)
		}
	}

	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}

	return FromImage(img)
}

// FromImage extracts the UKI and labels from an installer image.
func FromImage(img v1.Image) (*Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config: %w", err)
	}

	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("reading image digest: %w", err)
	}

	out := &Image{Name: cf.Config.Labels[LabelName], Version: cf.Config.Labels[LabelVersion], Digest: d.String()}
	if out.Name == "" || out.Version == "" {
		return nil, fmt.Errorf("installer image lacks labels %s and %s", LabelName, LabelVersion)
	}

	// the labels become a file name on the ESP, loader.conf's default and
	// console text: check them before anything else uses them
	if err := bootentry.ValidateLabel("installer image label "+LabelName, out.Name); err != nil {
		return nil, err
	}

	if err := bootentry.ValidateLabel("installer image label "+LabelVersion, out.Version); err != nil {
		return nil, err
	}

	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("reading image layers: %w", err)
	}

	// the last layer holding the file wins, as in an unpacked filesystem
	for i := len(layers) - 1; i >= 0 && out.UKI == nil; i-- {
		if out.UKI, err = findInLayer(layers[i], UKIPath); err != nil {
			return nil, err
		}
	}

	if out.UKI == nil {
		return nil, fmt.Errorf("installer image has no %s", UKIPath)
	}

	return out, nil
}

func findInLayer(l v1.Layer, p string) ([]byte, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("reading layer: %w", err)
	}
	defer rc.Close() //nolint:errcheck

	tr := tar.NewReader(rc)

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}

		if err != nil {
			return nil, fmt.Errorf("reading layer: %w", err)
		}

		if h.Typeflag == tar.TypeReg && (h.Name == p || h.Name == "./"+p || h.Name == "/"+p) {
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", p, err)
			}

			return b, nil
		}
	}
}

// Verify checks uki's Authenticode signature against certs (the db
// certificates firmware will check it against at boot).
func Verify(uki []byte, certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return fmt.Errorf("verifying UKI: no db certificates: %w", ErrSignature)
	}

	pe, err := authenticode.Parse(bytes.NewReader(uki))
	if err != nil {
		return fmt.Errorf("verifying UKI: parsing PE: %w", err)
	}

	for _, c := range certs {
		ok, err := pe.Verify(c)
		if err == nil && ok {
			return nil
		}
	}

	return fmt.Errorf("verifying UKI: %w", ErrSignature)
}

// Install verifies img and writes it to the ESP as NAME-VERSION+3.efi, then
// points loader.conf's default at the NAME-* glob so systemd-boot picks the
// newest entry while it is still counting, and falls back if it goes bad.
// onWrite, when set, is called with the entry file name after verification,
// just before the ESP is touched (labos announces it on the console).
func Install(esp bootentry.ESP, img *Image, certs []*x509.Certificate, onWrite func(file string)) (bootentry.Entry, error) {
	// an Image built by hand (not by FromImage) gets the same checks
	if err := bootentry.ValidateLabel("image name", img.Name); err != nil {
		return bootentry.Entry{}, err
	}

	if err := bootentry.ValidateLabel("image version", img.Version); err != nil {
		return bootentry.Entry{}, err
	}

	if err := Verify(img.UKI, certs); err != nil {
		return bootentry.Entry{}, err
	}

	if onWrite != nil {
		onWrite(bootentry.EntryFile(img.Name, img.Version))
	}

	e, err := esp.Install(img.Name, img.Version, bytes.NewReader(img.UKI))
	if err != nil {
		return bootentry.Entry{}, err
	}

	if err := esp.SetDefault(bootentry.Glob(img.Name)); err != nil {
		return bootentry.Entry{}, err
	}

	return e, nil
}
