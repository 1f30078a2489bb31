package build_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/pe"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
	"github.com/klauspost/compress/zstd"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/bake"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/spec"
)

// TestNoSecretInAnyOutput builds the lab image definition (images/lab.yaml:
// the four add-ons, the lab cluster) with the real baker and scans every
// output, unpacked (UKI sections, the initrd's appended cpio and the
// embedded-config squashfs in it, the disk's partitions and ESP files, the
// installer's layers, build.json), for PEM private key markers and for the
// bytes, plain and base64, of every private key and secret of the keys
// folder. Issue 9 finding 1: main embedded secrets.yaml's CAs and tokens.
func TestNoSecretInAnyOutput(t *testing.T) {
	f := newFixture(t)

	def := labDefinition(t, f)
	// A site's join token is baked on purpose (images/README.md
	// sideroLink.joinToken): it is not key material, so the scan below
	// must pass with it on the UKI's command line.
	const joinToken = "lfj_site-berlin-0123456789abcdef"
	def.SideroLink = &spec.SideroLink{API: "grpc://hub.example:8099", JoinToken: joinToken, Tunnel: true}
	def.Defaults()
	require.NoError(t, def.Validate("lab.yaml"))

	baker := bake.New(repoRoot(t))
	t.Cleanup(baker.Close)

	res, err := build.Build(context.Background(), def, build.Options{
		Root: f.root, OutDir: filepath.Join(f.root, "_out"), Baker: baker, Force: true,
		ToolsPath: filepath.Join(f.assets, "tools", "bin"),
	})
	require.NoError(t, err)

	needles := keyMaterial(t, f.keys)
	s := &scanner{t: t, needles: needles, tmp: t.TempDir()}

	require.NoError(t, filepath.WalkDir(res.Dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}

		rel, _ := filepath.Rel(res.Dir, p)

		if strings.HasSuffix(p, ".raw") {
			s.disk(rel, p)

			return nil
		}

		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}

		s.blob(rel, data, 0)

		return nil
	}))

	// The scan must have looked inside: the embedded config and the UKI in
	// the installer and on the disk.
	for _, want := range []string{"/.initrd", "extensions.yaml", "usr/local/etc/talos/config.yaml", "installer/", "disk.raw!EFI/"} {
		require.True(t, s.sawPath(want), "the scan never reached %q; seen: %v", want, s.paths)
	}

	for _, l := range s.leaks {
		t.Error(l)
	}

	uki, err := os.ReadFile(filepath.Join(res.Dir, def.Name+".efi"))
	require.NoError(t, err)
	require.Contains(t, string(uki), "siderolink.api=grpc://hub.example:8099?jointoken="+joinToken+"&grpc_tunnel=true",
		"the SideroLink kernel arguments are on the UKI's command line")
}

// labDefinition is images/lab.yaml with the fixture's registry base and keys.
func labDefinition(t *testing.T, f *fixture) *spec.Definition {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "images", "lab.yaml"))
	require.NoError(t, err)

	def, err := spec.Parse("lab.yaml", data)
	require.NoError(t, err)

	def.Base.Layout = ""
	def.Base.Image = f.ref
	def.Base.Digest = f.digest.String()
	def.Base.Insecure = true
	def.Keys = "keys"
	def.Installer.Base = f.def.Installer.Base

	return def
}

type needle struct {
	what string
	data []byte
}

// keyMaterial lists every private key and secret of a keys folder, as raw
// bytes and base64, plus the DER of each PEM private key.
func keyMaterial(t *testing.T, dir string) []needle {
	var out []needle

	add := func(what string, b []byte) {
		if len(b) < 8 {
			return
		}

		out = append(out,
			needle{what, b},
			needle{what + " (base64)", []byte(base64.StdEncoding.EncodeToString(b))})

		if blk, _ := pem.Decode(b); blk != nil {
			out = append(out, needle{what + " (DER)", blk.Bytes})
			// The first base64 line of the PEM body: a re-wrapped copy.
			if body := base64.StdEncoding.EncodeToString(blk.Bytes); len(body) > 64 {
				out = append(out, needle{what + " (PEM body)", []byte(body[:64])})
			}
		}
	}

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)

	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)

		if strings.Contains(string(b), "PRIVATE KEY") {
			add(e.Name(), b)
		}
	}

	bundle, err := secrets.LoadBundle(filepath.Join(dir, "secrets.yaml"))
	require.NoError(t, err)

	add("secrets.yaml Certs.Etcd.Key", bundle.Certs.Etcd.Key)
	add("secrets.yaml Certs.K8s.Key", bundle.Certs.K8s.Key)
	add("secrets.yaml Certs.K8sAggregator.Key", bundle.Certs.K8sAggregator.Key)
	add("secrets.yaml Certs.K8sServiceAccount.Key", bundle.Certs.K8sServiceAccount.Key)
	add("secrets.yaml Certs.OS.Key", bundle.Certs.OS.Key)
	add("secrets.yaml Secrets.BootstrapToken", []byte(bundle.Secrets.BootstrapToken))
	add("secrets.yaml Secrets.SecretboxEncryptionSecret", []byte(bundle.Secrets.SecretboxEncryptionSecret))
	add("secrets.yaml Secrets.AESCBCEncryptionSecret", []byte(bundle.Secrets.AESCBCEncryptionSecret))
	add("secrets.yaml TrustdInfo.Token", []byte(bundle.TrustdInfo.Token))
	add("secrets.yaml Cluster.Secret", []byte(bundle.Cluster.Secret))

	tc, err := clientconfig.Open(filepath.Join(dir, "talosconfig"))
	require.NoError(t, err)

	for name, c := range tc.Contexts {
		key, err := base64.StdEncoding.DecodeString(c.Key)
		require.NoError(t, err)
		add("talosconfig context "+name+" key", key)
	}

	require.Greater(t, len(out), 20)

	return out
}

// markers are PEM private key headers, plain and base64-encoded (the
// base64 of "-----BEGIN <type>PRIVATE KEY-----", as Talos stores keys).
var markers = func() [][]byte {
	m := [][]byte{[]byte("PRIVATE KEY-----")}
	for _, typ := range []string{"", "RSA ", "EC ", "ED25519 ", "ENCRYPTED "} {
		m = append(m, []byte(base64.StdEncoding.EncodeToString([]byte("-----BEGIN " + typ + "PRIVATE KEY-----"))[:24]))
	}

	return m
}()

type scanner struct {
	t       *testing.T
	needles []needle
	tmp     string
	paths   []string
	leaks   []string
}

func (s *scanner) sawPath(sub string) bool {
	for _, p := range s.paths {
		if strings.Contains(p, sub) {
			return true
		}
	}

	return false
}

// blob checks data and everything found inside it.
func (s *scanner) blob(where string, data []byte, depth int) {
	s.paths = append(s.paths, where)

	for _, m := range markers {
		if i := bytes.Index(data, m); i >= 0 {
			s.leaks = append(s.leaks, fmt.Sprintf("%s: private key marker %q at %d", where, m, i))
		}
	}

	for _, n := range s.needles {
		if i := bytes.Index(data, n.data); i >= 0 {
			s.leaks = append(s.leaks, fmt.Sprintf("%s: %s found at %d", where, n.what, i))
		}
	}

	if depth > 6 {
		return
	}

	switch {
	case len(data) > 2 && data[0] == 'M' && data[1] == 'Z':
		s.pe(where, data, depth)
	case len(data) > 2 && data[0] == 0x1f && data[1] == 0x8b:
		if zr, err := gzip.NewReader(bytes.NewReader(data)); err == nil {
			if b, err := io.ReadAll(zr); err == nil {
				s.blob(where+"!gunzip", b, depth+1)
			}
		}
	case len(data) > 512 && string(data[257:262]) == "ustar":
		s.tar(where, data, depth)
	case bytes.HasPrefix(data, []byte("070701")):
		s.cpio(where, data, depth)
	case bytes.HasPrefix(data, []byte("hsqs")):
		s.squashfs(where, data, depth)
	}
}

func (s *scanner) pe(where string, data []byte, depth int) {
	f, err := pe.NewFile(bytes.NewReader(data))
	if err != nil {
		return
	}
	defer f.Close() //nolint:errcheck

	for _, sec := range f.Sections {
		b, err := sec.Data()
		if err != nil {
			continue
		}

		if sec.VirtualSize > 0 && int(sec.VirtualSize) < len(b) {
			b = b[:sec.VirtualSize]
		}

		name := where + "/" + sec.Name
		if sec.Name == ".initrd" {
			s.initrd(name, b, depth)
		} else {
			s.blob(name, b, depth+1)
		}
	}
}

// initrd unpacks every zstd stream in an initramfs: Talos's imager appends
// the system extensions (the embedded config among them) as a compressed
// cpio after the base initramfs.
func (s *scanner) initrd(where string, data []byte, depth int) {
	s.blob(where, data, depth+1)

	magic := []byte{0x28, 0xb5, 0x2f, 0xfd}

	for off := 0; ; {
		i := bytes.Index(data[off:], magic)
		if i < 0 {
			return
		}

		off += i

		if zr, err := zstd.NewReader(bytes.NewReader(data[off:])); err == nil {
			if b, err := io.ReadAll(zr); err == nil && len(b) > 0 {
				s.blob(where+"!zstd@"+strconv.Itoa(off), b, depth+1)
			}

			zr.Close()
		}

		off += len(magic)
	}
}

func (s *scanner) cpio(where string, data []byte, depth int) {
	for len(data) >= 110 && bytes.HasPrefix(data, []byte("070701")) {
		field := func(i int) int {
			v, _ := strconv.ParseUint(string(data[6+8*i:14+8*i]), 16, 32)
			return int(v)
		}

		size, nameSize := field(6), field(11)
		pad := func(n int) int { return (n + 3) &^ 3 }

		nameEnd := 110 + nameSize
		if nameEnd > len(data) {
			return
		}

		name := strings.TrimRight(string(data[110:nameEnd]), "\x00")
		start := pad(nameEnd)

		if name == "TRAILER!!!" || start+size > len(data) {
			return
		}

		if size > 0 {
			s.blob(where+"!"+name, data[start:start+size], depth+1)
		}

		data = data[pad(start+size):]
	}
}

func (s *scanner) tar(where string, data []byte, depth int) {
	tr := tar.NewReader(bytes.NewReader(data))

	for {
		h, err := tr.Next()
		if err != nil {
			return
		}

		if h.Typeflag != tar.TypeReg {
			continue
		}

		b, err := io.ReadAll(tr)
		if err != nil {
			return
		}

		s.blob(where+"!"+h.Name, b, depth+1)
	}
}

func (s *scanner) squashfs(where string, data []byte, depth int) {
	p := filepath.Join(s.tmp, fmt.Sprintf("sq-%d", len(s.paths)))
	require.NoError(s.t, os.WriteFile(p, data, 0o600))

	b, err := file.OpenFromPath(p, true)
	require.NoError(s.t, err)

	defer b.Close() //nolint:errcheck

	fsys, err := squashfs.Read(b, int64(len(data)), 0, 0)
	require.NoError(s.t, err, where)

	s.fs(where, fsys, depth)
}

func (s *scanner) fs(where string, fsys fs.FS, depth int) {
	require.NoError(s.t, fs.WalkDir(fsys, ".", func(name string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() || !de.Type().IsRegular() {
			return err
		}

		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return fmt.Errorf("%s!%s: %w", where, name, err)
		}

		s.blob(where+"!"+name, b, depth+1)

		return nil
	}), where)
}

// disk scans the raw image and every partition's filesystem go-diskfs reads.
func (s *scanner) disk(where, p string) {
	data, err := os.ReadFile(p)
	require.NoError(s.t, err)
	s.blob(where, data, 99) // raw bytes only; the files are unpacked below

	d, err := diskfs.Open(p, diskfs.WithOpenMode(diskfs.ReadOnly))
	require.NoError(s.t, err)

	defer d.Close() //nolint:errcheck

	pt, err := d.GetPartitionTable()
	require.NoError(s.t, err)

	for i := range pt.GetPartitions() {
		fsys, err := d.GetFilesystem(i + 1)
		if err != nil {
			continue // STATE is an empty partition
		}

		s.fs(where, fsys, 0)
	}
}
