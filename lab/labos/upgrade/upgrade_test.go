package upgrade_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/foxboron/go-uefi/authenticode"
	"github.com/foxboron/go-uefi/efi/signature"
	"github.com/foxboron/go-uefi/efi/util"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
	"github.com/labfleet/labfleet/lab/labos/bootentry/espfake"
	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/labos/efivars"
	"github.com/labfleet/labfleet/lab/labos/internal/testpki"
	"github.com/labfleet/labfleet/lab/labos/upgrade"
)

func installerImage(t *testing.T, uki []byte, labels map[string]string) v1.Image {
	t.Helper()

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "labfleet/", Typeflag: tar.TypeDir, Mode: 0o755}))
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: upgrade.UKIPath, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(uki))}))
	_, err := tw.Write(uki)
	require.NoError(t, err)
	require.NoError(t, tw.Close())

	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()))
	require.NoError(t, err)

	img, err := mutate.AppendLayers(empty.Image, layer)
	require.NoError(t, err)

	cf, err := img.ConfigFile()
	require.NoError(t, err)
	cf.Config.Labels = labels

	img, err = mutate.ConfigFile(img, cf)
	require.NoError(t, err)

	return img
}

func push(t *testing.T, img v1.Image, repo string) (ref, host string) {
	t.Helper()

	srv := httptest.NewServer(registry.New())
	t.Cleanup(srv.Close)

	u, err := url.Parse(srv.URL)
	require.NoError(t, err)

	ref = u.Host + "/" + repo
	r, err := name.ParseReference(ref, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(r, img))

	return ref, u.Host
}

func newESP(t *testing.T) bootentry.ESP {
	t.Helper()

	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "EFI/Linux"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "loader"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "EFI/Linux/lab-1.0.0.efi"), []byte("v1"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(root, "loader/loader.conf"), []byte("timeout 0\ndefault lab-1.0.0.efi\n"), 0o644))

	return bootentry.ESP{Root: root}
}

func TestPullVerifyInstall(t *testing.T) {
	pe := testpki.UnsignedPE(t)
	db := testpki.NewSigner(t, "lab db")
	rogue := testpki.NewSigner(t, "rogue")

	labels := map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: "1.1.0"}

	cases := []struct {
		name    string
		uki     []byte
		labels  map[string]string
		certs   []*x509.Certificate
		wantErr string
	}{
		{name: "signed by db", uki: db.Sign(t, pe), labels: labels, certs: []*x509.Certificate{rogue.Cert, db.Cert}},
		{name: "unsigned", uki: pe, labels: labels, certs: []*x509.Certificate{db.Cert}, wantErr: "not signed"},
		{name: "rogue signer", uki: rogue.Sign(t, pe), labels: labels, certs: []*x509.Certificate{db.Cert}, wantErr: "not signed"},
		{name: "no db", uki: db.Sign(t, pe), labels: labels, wantErr: "no db certificates"},
		{name: "tampered", uki: func() []byte {
			b := db.Sign(t, pe)
			b[len(b)/3] ^= 0xff

			return b
		}(), labels: labels, certs: []*x509.Certificate{db.Cert}, wantErr: "not signed"},
		{name: "no labels", uki: db.Sign(t, pe), certs: []*x509.Certificate{db.Cert}, wantErr: "lacks labels"},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref, host := push(t, installerImage(t, tc.uki, tc.labels), "lab/installer:1.1.0")
			esp := newESP(t)

			var announced []string

			img, err := upgrade.Pull(context.Background(), ref, upgrade.Source{Insecure: []string{host}})
			if err == nil {
				_, err = upgrade.Install(esp, img, tc.certs, func(f string) { announced = append(announced, f) })
			}

			entries, lerr := os.ReadDir(filepath.Join(esp.Root, "EFI/Linux"))
			require.NoError(t, lerr)

			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.Len(t, entries, 1, "nothing may be written before verification")
				require.Empty(t, announced)

				d, derr := esp.Default()
				require.NoError(t, derr)
				require.Equal(t, "lab-1.0.0.efi", d)

				return
			}

			require.NoError(t, err)
			require.Equal(t, "1.1.0", img.Version)
			require.Equal(t, []string{"lab-1.1.0+3.efi"}, announced)

			got, err := os.ReadFile(filepath.Join(esp.Root, "EFI/Linux/lab-1.1.0+3.efi"))
			require.NoError(t, err)
			require.Equal(t, tc.uki, got)

			d, err := esp.Default()
			require.NoError(t, err)
			require.Equal(t, "lab-*", d, "the default stays a glob until the new entry is blessed")
		})
	}
}

// Labels come from whoever built the installer image: they must not reach
// a path outside EFI/Linux, add lines to loader.conf, or anything else.
func TestHostileLabels(t *testing.T) {
	pe := testpki.UnsignedPE(t)
	db := testpki.NewSigner(t, "lab db")
	uki := db.Sign(t, pe)

	cases := []struct {
		name    string
		labels  map[string]string
		wantErr string
	}{
		{name: "version escapes the ESP", labels: map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: "x/../../../../outside/pwned"},
			wantErr: `label org.labfleet.version "x/../../../../outside/pwned"`},
		{name: "name adds a loader.conf line", labels: map[string]string{upgrade.LabelName: "lab\nsecure-boot-enroll force", upgrade.LabelVersion: "1.1.0"},
			wantErr: `label org.labfleet.name "lab\nsecure-boot-enroll force"`},
		{name: "name with a glob", labels: map[string]string{upgrade.LabelName: "*", upgrade.LabelVersion: "1.1.0"},
			wantErr: "label org.labfleet.name"},
		{name: "version with a boot counter", labels: map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: "1.1.0+0-3"},
			wantErr: "label org.labfleet.version"},
		{name: "version with NUL", labels: map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: "1.1\x00"},
			wantErr: "label org.labfleet.version"},
		{name: "dot dot", labels: map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: "1..2"},
			wantErr: "label org.labfleet.version"},
		{name: "backslash", labels: map[string]string{upgrade.LabelName: `lab\x`, upgrade.LabelVersion: "1.2"},
			wantErr: "label org.labfleet.name"},
		{name: "too long", labels: map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: strings.Repeat("1", 64)},
			wantErr: "label org.labfleet.version"},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			espRoot := filepath.Join(parent, "a", "b", "c", "esp")
			require.NoError(t, os.MkdirAll(filepath.Join(parent, "a", "b", "c", "outside"), 0o755))
			require.NoError(t, os.MkdirAll(filepath.Join(espRoot, "EFI/Linux"), 0o755))
			require.NoError(t, os.MkdirAll(filepath.Join(espRoot, "loader"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(espRoot, "EFI/Linux/lab-1.0.0.efi"), []byte("v1"), 0o644))
			conf := "secure-boot-enroll if-safe\ntimeout 0\ndefault lab-1.0.0.efi\n"
			require.NoError(t, os.WriteFile(filepath.Join(espRoot, "loader/loader.conf"), []byte(conf), 0o644))
			esp := bootentry.ESP{Root: espRoot}

			img := installerImage(t, uki, tc.labels)

			var err error

			pulled, err := upgrade.FromImage(img)
			if err == nil {
				_, err = upgrade.Install(esp, pulled, []*x509.Certificate{db.Cert}, nil)
			}

			require.ErrorContains(t, err, tc.wantErr)
			require.ErrorContains(t, err, "must match")

			// nothing written anywhere under the test's tree but the ESP as it was
			var files []string
			require.NoError(t, filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					rel, _ := filepath.Rel(parent, p)
					files = append(files, rel)
				}

				return err
			}))
			require.ElementsMatch(t, []string{"a/b/c/esp/EFI/Linux/lab-1.0.0.efi", "a/b/c/esp/loader/loader.conf"}, files)

			got, err := os.ReadFile(filepath.Join(espRoot, "loader/loader.conf"))
			require.NoError(t, err)
			require.Equal(t, conf, string(got))
		})
	}
}

// dbx overrides db, as in firmware: a UKI whose signer or whose
// Authenticode hash is in dbx is refused before the ESP is touched.
func TestVerifyDBX(t *testing.T) {
	pe := testpki.UnsignedPE(t)
	db := testpki.NewSigner(t, "lab db")
	revoked := testpki.NewSigner(t, "revoked db key")
	other := testpki.NewSigner(t, "other")

	uki := db.Sign(t, pe)
	revokedUKI := revoked.Sign(t, pe)

	parsed, err := authenticode.Parse(bytes.NewReader(uki))
	require.NoError(t, err)
	ukiHash := parsed.Hash(crypto.SHA256)

	owner := *util.StringToGUID("11111111-2222-3333-4444-555555555555")
	dbx := func(t *testing.T, certs []*x509.Certificate, hashes ...[]byte) efivars.Forbidden {
		t.Helper()

		// built and parsed as firmware would hold it, so the test covers
		// efivars' decoding of go-uefi signature lists too
		sdb := signature.NewSignatureDatabase()
		for _, c := range certs {
			require.NoError(t, sdb.Append(signature.CERT_X509_GUID, owner, c.Raw))
		}

		for _, h := range hashes {
			require.NoError(t, sdb.Append(signature.CERT_SHA256_GUID, owner, h))
		}

		f, err := efivars.ParseForbidden(sdb.Bytes())
		require.NoError(t, err)

		return f
	}

	// db as firmware holds it: a go-uefi signature list read back by efivars
	dbList := func(t *testing.T, certs ...*x509.Certificate) []*x509.Certificate {
		t.Helper()

		sdb := signature.NewSignatureDatabase()
		for _, c := range certs {
			require.NoError(t, sdb.Append(signature.CERT_X509_GUID, owner, c.Raw))
		}

		out, err := efivars.ParseCertificates(sdb.Bytes())
		require.NoError(t, err)

		return out
	}

	cases := []struct {
		name    string
		uki     []byte
		trust   upgrade.Trust
		wantErr string
	}{
		{name: "empty dbx", uki: uki, trust: upgrade.Trust{DB: dbList(t, db.Cert)}},
		{name: "unrelated dbx entries", uki: uki, trust: upgrade.Trust{DB: []*x509.Certificate{db.Cert},
			DBX: dbx(t, []*x509.Certificate{other.Cert}, make([]byte, 32))}},
		{name: "signer in dbx", uki: revokedUKI, trust: upgrade.Trust{DB: dbList(t, db.Cert, revoked.Cert),
			DBX: dbx(t, []*x509.Certificate{revoked.Cert})}, wantErr: `signed by "CN=revoked db key", a certificate in dbx`},
		{name: "image hash in dbx", uki: uki, trust: upgrade.Trust{DB: []*x509.Certificate{db.Cert},
			DBX: dbx(t, nil, ukiHash)}, wantErr: "Authenticode sha256 " + hex.EncodeToString(ukiHash) + " is in dbx"},
		{name: "in dbx and not in db", uki: revokedUKI, trust: upgrade.Trust{DB: []*x509.Certificate{db.Cert},
			DBX: dbx(t, []*x509.Certificate{revoked.Cert})}, wantErr: "in dbx"},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.trust.Verify(tc.uki)
			if tc.wantErr == "" {
				require.NoError(t, err)

				return
			}

			require.ErrorIs(t, err, upgrade.ErrForbidden)
			require.ErrorContains(t, err, tc.wantErr)

			// and through the install path: nothing written, default kept
			esp := newESP(t)
			_, err = upgrade.InstallImage(esp, &upgrade.Image{Name: "lab", Version: "1.1.0", UKI: tc.uki}, upgrade.Options{Trust: tc.trust})
			require.ErrorContains(t, err, tc.wantErr)
			require.Equal(t, []string{"lab-1.0.0.efi"}, espfake.Names(t, esp))

			d, err := esp.Default()
			require.NoError(t, err)
			require.Equal(t, "lab-1.0.0.efi", d)
		})
	}
}

// Six upgrades through the node's install path on an ESP with room for
// four UKIs: housekeeping keeps running + previous + new, and an upgrade
// that cannot fit is refused before the console announces a write.
func TestUpgradesKeepTheESPSmall(t *testing.T) {
	pe := testpki.UnsignedPE(t)
	db := testpki.NewSigner(t, "lab db")
	uki := db.Sign(t, pe)
	size := int64(len(uki))

	esp := espfake.WithCapacity(espfake.New(t, "lab-1.0.0.efi"), 4*size+bootentry.SpaceMargin+size/2)
	trust := upgrade.Trust{DB: []*x509.Certificate{db.Cert}}
	booted := "lab-1.0.0.efi"

	for i := 1; i <= 6; i++ {
		v := fmt.Sprintf("1.%d.0", i)

		var announced []string

		e, err := upgrade.InstallImage(esp, &upgrade.Image{Name: "lab", Version: v, UKI: uki},
			upgrade.Options{Trust: trust, Booted: booted, OnWrite: func(f string) { announced = append(announced, f) }})
		require.NoError(t, err, "upgrade %d", i)
		require.Equal(t, []string{e.File}, announced)

		blessed, err := esp.Bless(e.File)
		require.NoError(t, err)
		require.NoError(t, esp.SetDefault(blessed.ID()))

		booted = blessed.ID()
	}

	require.Equal(t, []string{"lab-1.4.0.efi", "lab-1.5.0.efi", "lab-1.6.0.efi"}, espfake.Names(t, esp))

	// an ESP too small for running + previous + new
	tight := espfake.WithCapacity(espfake.New(t), 2*size+bootentry.SpaceMargin)
	espfake.Put(t, tight, "lab-1.0.0.efi", int(size))
	espfake.Put(t, tight, "lab-1.1.0.efi", int(size))

	called := false
	_, err := upgrade.InstallImage(tight, &upgrade.Image{Name: "lab", Version: "1.2.0", UKI: uki},
		upgrade.Options{Trust: trust, Booted: "lab-1.1.0.efi", OnWrite: func(string) { called = true }})
	require.ErrorIs(t, err, bootentry.ErrNoSpace)
	require.False(t, called, "no write announced")
	require.Equal(t, []string{"lab-1.0.0.efi", "lab-1.1.0.efi"}, espfake.Names(t, tight))
}

// A layer that claims a huge uki.efi is refused before it is read into
// PID 1's memory.
func TestOversizedUKI(t *testing.T) {
	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: upgrade.UKIPath, Typeflag: tar.TypeReg, Mode: 0o644, Size: upgrade.MaxUKISize + 1}))
	// no body: the header alone must be enough to refuse

	layer := static.NewLayer(append(buf.Bytes(), make([]byte, 1024)...), types.OCIUncompressedLayer)
	img, err := mutate.AppendLayers(empty.Image, layer)
	require.NoError(t, err)

	cf, err := img.ConfigFile()
	require.NoError(t, err)

	cf = cf.DeepCopy()
	cf.Config.Labels = map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: "1.1.0"}
	img, err = mutate.ConfigFile(img, cf)
	require.NoError(t, err)

	_, err = upgrade.FromImage(img)
	require.ErrorContains(t, err, "more than the 134217728 a UKI may have")
}

// A node whose only outward path is a mirror (the hub's host or a site
// cache) pulls an image named after a registry it cannot reach from the
// mirror endpoint of its machine config, plain HTTP for an http:// endpoint
// as in Talos; without skipFallback a dead mirror falls back to the
// registry, with it the error names every endpoint tried.
func TestPullThroughMirror(t *testing.T) {
	db := testpki.NewSigner(t, "lab db")
	img := installerImage(t, db.Sign(t, testpki.UnsignedPE(t)), map[string]string{upgrade.LabelName: "lab", upgrade.LabelVersion: "1.1.0"})
	_, mirrorHost := push(t, img, "lab/installer:1.1.0")

	d, err := img.Digest()
	require.NoError(t, err)

	ref := "registry.labfleet.invalid/lab/installer@" + d.String()

	mirrors, err := config.Mirrors([]byte(`version: v1alpha1
machine: {type: controlplane}
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: registry.labfleet.invalid
endpoints:
  - url: http://127.0.0.1:1
  - url: http://` + mirrorHost + `
skipFallback: true
`))
	require.NoError(t, err)

	got, err := upgrade.Pull(context.Background(), ref, upgrade.Source{Mirrors: mirrors})
	require.NoError(t, err)
	require.Equal(t, d.String(), got.Digest)
	require.Equal(t, "1.1.0", got.Version)

	// the mirror does not hold it, the fallback is skipped: every endpoint is named
	_, err = upgrade.Pull(context.Background(), "registry.labfleet.invalid/lab/other:1.0", upgrade.Source{Mirrors: mirrors})
	require.ErrorContains(t, err, "mirror http://127.0.0.1:1")
	require.ErrorContains(t, err, "mirror http://"+mirrorHost)

	// a wildcard mirror without skipFallback: a dead mirror falls back to the registry
	mirrors, err = config.Mirrors([]byte("apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: \"*\"\nendpoints:\n  - url: http://127.0.0.1:1\n"))
	require.NoError(t, err)

	got, err = upgrade.Pull(context.Background(), mirrorHost+"/lab/installer:1.1.0", upgrade.Source{Mirrors: mirrors, Insecure: []string{mirrorHost}})
	require.NoError(t, err)
	require.Equal(t, d.String(), got.Digest)
}
