// Package upgrade installs a new UKI from an installer image in Talos's
// installer layout: pull it from a registry, find the signed UKI at
// usr/install/amd64/vmlinuz.efi (where Talos's imager puts it and Talos's
// installer takes it from), verify its Authenticode signature
// against db and dbx (as firmware will) BEFORE anything touches the ESP,
// then write it as a boot-counted entry so systemd-boot tries it next and
// falls back if it never gets blessed.
package upgrade

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
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
	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/labos/efivars"
)

// Installer image layout (docs/contracts.md "Installer image"): Talos's
// machinery constants.UKIAssetPath for amd64, and labfleet's labels.
const (
	UKIPath      = "usr/install/amd64/vmlinuz.efi"
	LabelName    = "org.labfleet.name"
	LabelVersion = "org.labfleet.version"
)

// MaxUKISize bounds the UKI read from a layer: it is held in memory by
// PID 1 and must fit on the ESP next to two other entries.
const MaxUKISize = 128 << 20

// Verification refusals.
var (
	// ErrSignature means the UKI is not signed by any db certificate.
	ErrSignature = errors.New("UKI is not signed by a certificate enrolled in db")
	// ErrForbidden means dbx lists the UKI's hash or one of its signers.
	ErrForbidden = errors.New("UKI is forbidden by dbx")
)

// Image is a pulled installer image's payload.
type Image struct {
	Name    string
	Version string
	Digest  string
	UKI     []byte
}

// Source says where images come from: registries reached over plain HTTP
// (the lab registry at 10.0.2.100:5000) and the registry mirrors of the
// machine configuration.
type Source struct {
	Insecure []string
	Mirrors  map[string]config.Mirror
}

// Pull fetches ref and extracts the UKI. A registry with a mirror is pulled
// from its endpoints in order, as Talos's CRI does, then from the registry
// itself unless the mirror skips the fallback; the digest in ref (if any)
// is checked by the client whichever endpoint answers.
func Pull(ctx context.Context, ref string, src Source) (*Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parsing image reference %q: %w", ref, err)
	}

	var tried []error

	if m, ok := config.For(src.Mirrors, r.Context().RegistryStr()); ok {
		for _, ep := range m.Endpoints {
			img, err := pullFrom(ctx, r, ep.Host, ep.Scheme == "http")
			if err == nil {
				return img, nil
			}

			tried = append(tried, fmt.Errorf("mirror %s: %w", ep.Redacted(), err))
		}

		if m.SkipFallback {
			return nil, fmt.Errorf("pulling %s: %w", ref, errors.Join(tried...))
		}
	}

	img, err := pullFrom(ctx, r, r.Context().RegistryStr(), slices.Contains(src.Insecure, r.Context().RegistryStr()))
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, errors.Join(append(tried, err)...))
	}

	return img, nil
}

// pullFrom fetches r's repository and identifier from registry host.
func pullFrom(ctx context.Context, r name.Reference, host string, insecure bool) (*Image, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}

	repo, err := name.NewRepository(host+"/"+r.Context().RepositoryStr(), opts...)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", host, err)
	}

	var at name.Reference

	switch id := r.(type) {
	case name.Digest:
		at = repo.Digest(id.DigestStr())
	default:
		at = repo.Tag(r.Identifier())
	}

	img, err := remote.Image(at, remote.WithContext(ctx))
	if err != nil {
		return nil, err
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
			if h.Size > MaxUKISize {
				return nil, fmt.Errorf("reading %s: %d bytes, more than the %d a UKI may have", p, h.Size, MaxUKISize)
			}

			b, err := io.ReadAll(io.LimitReader(tr, MaxUKISize))
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", p, err)
			}

			return b, nil
		}
	}
}

// Trust is what firmware checks a UKI against at boot: db allows, dbx
// forbids, and dbx wins.
type Trust struct {
	DB  []*x509.Certificate
	DBX efivars.Forbidden
}

// Verify refuses uki when dbx forbids it (its Authenticode sha256 or one
// of its signers is listed), then requires a signature by a db
// certificate. Errors wrap ErrForbidden or ErrSignature.
func (t Trust) Verify(uki []byte) error {
	pe, err := authenticode.Parse(bytes.NewReader(uki))
	if err != nil {
		return fmt.Errorf("verifying UKI: parsing PE: %w", err)
	}

	sum := pe.Hash(crypto.SHA256)
	for _, h := range t.DBX.Hashes {
		if bytes.Equal(h, sum) {
			return fmt.Errorf("verifying UKI: its Authenticode sha256 %x is in dbx: %w", sum, ErrForbidden)
		}
	}

	for _, c := range t.DBX.Certs {
		if ok, err := pe.Verify(c); err == nil && ok {
			return fmt.Errorf("verifying UKI: signed by %q, a certificate in dbx: %w", c.Subject.String(), ErrForbidden)
		}
	}

	if len(t.DB) == 0 {
		return fmt.Errorf("verifying UKI: no db certificates: %w", ErrSignature)
	}

	for _, c := range t.DB {
		if ok, err := pe.Verify(c); err == nil && ok {
			return nil
		}
	}

	return fmt.Errorf("verifying UKI: %w", ErrSignature)
}

// Verify checks uki's Authenticode signature against certs (db only).
//
// Deprecated: use Trust.Verify, which also consults dbx.
func Verify(uki []byte, certs []*x509.Certificate) error {
	return Trust{DB: certs}.Verify(uki)
}

// Options are InstallImage's inputs besides the image.
type Options struct {
	Trust Trust
	// Booted is the running entry (LoaderEntrySelected); housekeeping
	// keeps it, the previous blessed entry and the new one, and prunes
	// older entries of the image's name (bootentry.ESP.InstallWith).
	Booted string
	// OnWrite, when set, is called with the entry file name after
	// verification and the space check, just before the ESP is touched
	// (labos announces it on the console).
	OnWrite func(file string)
	// Checkpoint is passed to bootentry.InstallOptions (power-cut tests).
	Checkpoint func(point string)
}

// Install is InstallImage with db certificates only.
//
// Deprecated: use InstallImage, which also consults dbx.
func Install(esp bootentry.ESP, img *Image, certs []*x509.Certificate, onWrite func(file string)) (bootentry.Entry, error) {
	return InstallImage(esp, img, Options{Trust: Trust{DB: certs}, OnWrite: onWrite})
}

// InstallImage verifies img against db and dbx, makes room on the ESP
// (refusing with bootentry.ErrNoSpace when it cannot) and writes it as
// NAME-VERSION+3.efi, then points loader.conf's default at the NAME-* glob
// so systemd-boot picks the newest entry while it is still counting, and
// falls back if it goes bad.
func InstallImage(esp bootentry.ESP, img *Image, opts Options) (bootentry.Entry, error) {
	// an Image built by hand (not by FromImage) gets the same checks
	if err := bootentry.ValidateLabel("image name", img.Name); err != nil {
		return bootentry.Entry{}, err
	}

	if err := bootentry.ValidateLabel("image version", img.Version); err != nil {
		return bootentry.Entry{}, err
	}

	if err := opts.Trust.Verify(img.UKI); err != nil {
		return bootentry.Entry{}, err
	}

	e, err := esp.InstallWith(img.Name, img.Version, bytes.NewReader(img.UKI),
		bootentry.InstallOptions{Booted: opts.Booted, BeforeWrite: opts.OnWrite, Checkpoint: opts.Checkpoint})
	if err != nil {
		return bootentry.Entry{}, err
	}

	if err := esp.SetDefault(bootentry.Glob(img.Name)); err != nil {
		return bootentry.Entry{}, err
	}

	return e, nil
}
