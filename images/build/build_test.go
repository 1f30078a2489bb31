package build_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"debug/pe"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foxboron/go-uefi/authenticode"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/extensions/machineconfig"
	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/inspect"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

// bootstrapConfig is a bootstrap config without secrets, as images embed.
const bootstrapConfig = "apiVersion: v1alpha1\nkind: ImageCacheConfig\nlocal:\n    enabled: true\n"

// staticBaker stands in for extensions/ (tested there): a fixed machine config.
type staticBaker struct{ config string }

func (s staticBaker) Fingerprint(*spec.Definition) (string, error) { return s.config, nil }

func (s staticBaker) Bake(context.Context, build.BakeRequest) (*build.Baked, error) {
	return &build.Baked{MachineConfig: []byte(s.config)}, nil
}

func repoRoot(t testing.TB) string {
	dir, err := os.Getwd()
	require.NoError(t, err)

	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}

		require.NotEqual(t, dir, filepath.Dir(dir), "go.mod not found")
		dir = filepath.Dir(dir)
	}
}

// labAssets returns the pinned trixie kernel and systemd EFI binaries
// (hack/fetch-lab-assets.sh); the imager needs real PE inputs.
func labAssets(t testing.TB) string {
	dir := os.Getenv("LABFLEET_CACHE")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), "_cache")
	}

	dir = filepath.Join(dir, "lab-assets")
	if _, err := os.Stat(filepath.Join(dir, "systemd-stub.efi")); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("lab assets missing in %s: run hack/install-deps.sh (fetches them)", dir)
		}

		t.Skipf("lab assets missing in %s: run hack/fetch-lab-assets.sh", dir)
	}

	return dir
}

// talosLayoutImage builds an image shaped like Talos's imager image.
func talosLayoutImage(t testing.TB, assets string, initramfs []byte) v1.Image {
	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: "usr/install/amd64/" + name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}))
		_, err := tw.Write(data)
		require.NoError(t, err)
	}

	for _, f := range []string{"vmlinuz", "systemd-stub.efi", "systemd-boot.efi"} {
		data, err := os.ReadFile(filepath.Join(assets, f))
		require.NoError(t, err)
		add(f, data)
	}

	add("initramfs.xz", initramfs)
	require.NoError(t, tw.Close())

	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	require.NoError(t, err)

	img, err := mutate.AppendLayers(empty.Image, layer)
	require.NoError(t, err)

	return img
}

// InstallerBaseBinary is the stand-in installer binary of the test
// installer-base: the tests check it is carried over unchanged.
var installerBaseBinary = []byte("#!/bin/sh\necho stand-in Talos installer\n")

// talosInstallerBaseImage builds an image in the layout of Talos's
// installer-base (Dockerfile target installer-base): one squashed layer
// with /usr/bin/installer, the alpha.talos.dev/version label and
// /bin/installer as entrypoint.
func talosInstallerBaseImage(t testing.TB) v1.Image {
	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "usr/bin/", Mode: 0o755, Typeflag: tar.TypeDir}))
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "usr/bin/installer", Mode: 0o755, Size: int64(len(installerBaseBinary)), Typeflag: tar.TypeReg}))
	_, err := tw.Write(installerBaseBinary)
	require.NoError(t, err)
	require.NoError(t, tw.Close())

	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	require.NoError(t, err)

	img, err := mutate.AppendLayers(empty.Image, layer)
	require.NoError(t, err)

	cf, err := img.ConfigFile()
	require.NoError(t, err)

	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config.Entrypoint = []string{"/bin/installer"}
	cf.Config.Env = []string{"VERSION=v1.14.1"}
	cf.Config.Labels = map[string]string{"alpha.talos.dev/version": "v1.14.1", "org.opencontainers.image.source": "https://github.com/siderolabs/talos"}

	img, err = mutate.ConfigFile(img, cf)
	require.NoError(t, err)

	return img
}

// pushImage writes img to ref on the insecure in-process registry and
// returns its digest.
func pushImage(t testing.TB, ref string, img v1.Image) v1.Hash {
	tag, err := name.NewTag(ref, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(tag, img))

	digest, err := img.Digest()
	require.NoError(t, err)

	return digest
}

type fixture struct {
	root, keys, ref, assets string
	digest                  v1.Hash
	// installerBase is the installer-base image the fixture serves (pinned by digest).
	installerBase v1.Image
	def           *spec.Definition
}

func newFixture(t testing.TB) *fixture {
	return newFixtureWith(t, []byte("not a real initramfs"))
}

// newFixtureWith serves a Talos-layout base with the given initramfs from an
// in-process registry and makes a fresh key set.
func newFixtureWith(t testing.TB, initramfs []byte) *fixture {
	t.Helper()

	assets := labAssets(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)

	u, err := url.Parse(srv.URL)
	require.NoError(t, err)

	ref := u.Host + "/siderolabs/imager:v1.14.1"
	digest := pushImage(t, ref, talosLayoutImage(t, assets, initramfs))

	ibRef := u.Host + "/siderolabs/installer-base:v1.14.1"
	ib := talosInstallerBaseImage(t)
	ibDigest := pushImage(t, ibRef, ib)

	root := t.TempDir()
	keyDir := filepath.Join(root, "keys")
	_, err = keys.Generate(keyDir, keys.GenerateOptions{})
	require.NoError(t, err)

	def, err := spec.Parse("edge.yaml", []byte(`
name: edge
version: 1.0.0
talosVersion: v1.14.1
base:
  image: `+ref+`
  digest: `+digest.String()+`
  insecure: true
schematic:
  customization:
    extraKernelArgs: [console=ttyS0]
keys: keys
outputs: [uki, disk, installer]
disk: {espMiB: 64, stateMiB: 32}
installer:
  base:
    image: `+ibRef+`
    digest: `+ibDigest.String()+`
    insecure: true
`))
	require.NoError(t, err)

	return &fixture{root: root, keys: keyDir, ref: ref, assets: assets, digest: digest, installerBase: ib, def: def}
}

func (f *fixture) build(_ testing.TB, out string, force bool) (*build.Result, error) {
	return build.Build(context.Background(), f.def, build.Options{
		Root: f.root, OutDir: out, Baker: staticBaker{config: bootstrapConfig}, Force: force,
		ToolsPath: filepath.Join(f.assets, "tools", "bin"),
	})
}

func TestBuildFromRegistryBase(t *testing.T) {
	f := newFixture(t)
	out := filepath.Join(f.root, "_out")

	res, err := f.build(t, out, false)
	require.NoError(t, err)
	require.False(t, res.Record.Cached)

	rec, err := record.Load(res.Dir)
	require.NoError(t, err)
	require.Equal(t, f.digest.String(), rec.Inputs[0].Digest)
	require.Len(t, rec.Inputs, 1+len(base.Inputs)+1)
	require.Contains(t, rec.Cmdline, "labos.version=1.0.0")

	// labos.db= is the sha256 of our db certificate's DER, so a node can
	// check it is the one enrolled before sealing.
	certPEM, err := os.ReadFile(filepath.Join(f.keys, keys.UKISigningCertFile))
	require.NoError(t, err)
	blk, _ := pem.Decode(certPEM)
	require.NotNil(t, blk)
	dbSum := sha256.Sum256(blk.Bytes)
	require.Contains(t, rec.Cmdline, " "+build.DBCmdlineParam+"="+hex.EncodeToString(dbSum[:]))

	// The embedded bootstrap config is an output too (for labctl).
	bc, ok := rec.Output(build.BootstrapConfigKind)
	require.True(t, ok)
	bcData, err := os.ReadFile(filepath.Join(res.Dir, bc.Path))
	require.NoError(t, err)
	require.Equal(t, bootstrapConfig, string(bcData))

	for _, kind := range spec.KnownOutputs {
		o, ok := rec.Output(kind)
		require.True(t, ok, "output %s missing", kind)
		require.NotEmpty(t, o.SHA256)
	}

	checkInstallerRecorded(t, res.Dir, rec)

	uki, _ := rec.Output("uki")
	p, err := pe.Open(filepath.Join(res.Dir, uki.Path))
	require.NoError(t, err)

	for _, s := range []string{".linux", ".initrd", ".cmdline", ".osrel", ".pcrsig", ".pcrpkey"} {
		require.NotNil(t, p.Section(s), "section %s missing", s)
	}
	p.Close()

	if _, err := exec.LookPath("sbverify"); err == nil {
		cmd := exec.Command("sbverify", "--cert", filepath.Join(f.keys, keys.UKISigningCertFile), filepath.Join(res.Dir, uki.Path))
		outp, err := cmd.CombinedOutput()
		require.NoError(t, err, "sbverify: %s", outp)
	}

	// A rebuild with nothing changed is served from the cache.
	again, err := f.build(t, out, false)
	require.NoError(t, err)
	require.True(t, again.Record.Cached)
	require.Equal(t, rec.CacheKey, again.Record.CacheKey)
}

// signatureRange is where the Authenticode certificate table sits in a PE file.
func signatureRange(t *testing.T, data []byte) (int, int) {
	f, err := pe.NewFile(bytes.NewReader(data))
	require.NoError(t, err)

	oh, ok := f.OptionalHeader.(*pe.OptionalHeader64)
	require.True(t, ok)

	dd := oh.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]
	require.NotZero(t, dd.Size, "not signed")

	return int(dd.VirtualAddress), int(dd.Size)
}

// TestBuildIsReproducible builds twice in one process, into different
// output folders, from the same inputs and epoch: every output is
// byte-identical, signatures included (their signingTime is
// SOURCE_DATE_EPOCH). TestReproducibleAcrossProcesses does the same across
// processes, umasks and clocks with the real lab base.
func TestBuildIsReproducible(t *testing.T) {
	f := newFixture(t)

	a, err := f.build(t, filepath.Join(f.root, "a"), true)
	require.NoError(t, err)
	time.Sleep(1100 * time.Millisecond) // another second on the wall clock
	b, err := f.build(t, filepath.Join(f.root, "b"), true)
	require.NoError(t, err)

	filesA, filesB := treeDigests(t, a.Dir), treeDigests(t, b.Dir)
	require.Contains(t, filesA, "edge.efi")
	require.Equal(t, filesA, filesB)
	require.NotEmpty(t, a.Record.Steps, "the result still carries the step timings")
}

func TestDigestMismatchKeepsPreviousOutputs(t *testing.T) {
	f := newFixture(t)
	out := filepath.Join(f.root, "_out")

	res, err := f.build(t, out, false)
	require.NoError(t, err)

	before, err := os.ReadFile(filepath.Join(res.Dir, record.FileName))
	require.NoError(t, err)

	f.def.Base.Digest = "sha256:" + string(bytes.Repeat([]byte("0"), 64))
	_, err = f.build(t, out, true)
	require.Error(t, err)
	require.True(t, errors.Is(err, base.ErrDigestMismatch), "got %v", err)
	require.Contains(t, err.Error(), "update base.digest")

	after, err := os.ReadFile(filepath.Join(res.Dir, record.FileName))
	require.NoError(t, err)
	require.Equal(t, before, after, "previous outputs changed by a failed build")
}

func TestMissingKeysNamesTheFix(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, os.Remove(filepath.Join(f.keys, keys.PCRSigningKeyFile)))

	_, err := f.build(t, filepath.Join(f.root, "_out"), false)
	require.Error(t, err)
	require.Contains(t, err.Error(), keys.PCRSigningKeyFile)
	require.Contains(t, err.Error(), "imagectl keys generate")
}

// TestBuildRefusesToEmbedSecrets: a baker that returns a node's full
// config (what main embedded: finding 1 of issue 9) fails the build, naming
// the document and field, and writes no output.
func TestBuildRefusesToEmbedSecrets(t *testing.T) {
	f := newFixture(t)
	out := filepath.Join(f.root, "_out")

	full, err := machineconfig.NodeConfig(machineconfig.Options{
		ClusterName: "lab", Endpoint: "https://10.0.2.15:6443", SecretsPath: filepath.Join(f.keys, keys.SecretsFile),
	}, machineconfig.RoleControlPlane)
	require.NoError(t, err)

	_, err = build.Build(context.Background(), f.def, build.Options{
		Root: f.root, OutDir: out, Baker: staticBaker{config: string(full)},
		ToolsPath: filepath.Join(f.assets, "tools", "bin"),
	})
	require.ErrorIs(t, err, machineconfig.ErrSecretInConfig)
	require.ErrorContains(t, err, "refusing to embed the machine config")
	require.ErrorContains(t, err, "v1alpha1: machine.ca.key")

	_, err = os.Stat(filepath.Join(out, f.def.Name))
	require.True(t, errors.Is(err, os.ErrNotExist), "no output written: %v", err)
}

func TestSwitchingBackIsServedFromTheCache(t *testing.T) {
	f := newFixture(t)
	out := filepath.Join(f.root, "_out")

	first, err := f.build(t, out, false)
	require.NoError(t, err)

	uki, _ := first.Record.Output("uki")

	f.def.Version = "1.1.0"
	other, err := f.build(t, out, false)
	require.NoError(t, err)
	require.False(t, other.Record.Cached)

	f.def.Version = "1.0.0"
	back, err := f.build(t, out, false)
	require.NoError(t, err)
	require.True(t, back.Record.Cached, "a build made before must come from the cache")
	require.Equal(t, first.Record.CacheKey, back.Record.CacheKey)

	sum, err := exec.Command("sha256sum", filepath.Join(back.Dir, uki.Path)).Output()
	require.NoError(t, err)
	require.Contains(t, string(sum), uki.SHA256, "restored UKI differs from the one built")

	rec, err := record.Load(back.Dir)
	require.NoError(t, err)
	require.Equal(t, "1.0.0", rec.Version)
}

// TestNoOpNoticesChangedOutput: an output overwritten in place, same size
// and mtime put back, is not "unchanged": the build restores what it built,
// and the cache copy was never touched by the write.
func TestNoOpNoticesChangedOutput(t *testing.T) {
	f := newFixture(t)
	out := filepath.Join(f.root, "_out")

	first, err := f.build(t, out, false)
	require.NoError(t, err)

	disk, ok := first.Record.Output("disk")
	require.True(t, ok)

	p := filepath.Join(first.Dir, disk.Path)
	st, err := os.Stat(p)
	require.NoError(t, err)

	fh, err := os.OpenFile(p, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fh.WriteAt([]byte("CHANGED!"), 1<<20)
	require.NoError(t, err)
	require.NoError(t, fh.Close())
	require.NoError(t, os.Chtimes(p, st.ModTime(), st.ModTime()))

	cached := filepath.Join(f.root, "_cache", "build", first.Record.CacheKey, disk.Path)
	sum, err := exec.Command("sha256sum", cached).Output()
	require.NoError(t, err)
	require.Contains(t, string(sum), disk.SHA256, "writing to the output changed the cache copy")

	again, err := f.build(t, out, false)
	require.NoError(t, err)

	sum, err = exec.Command("sha256sum", p).Output()
	require.NoError(t, err)
	require.Contains(t, string(sum), disk.SHA256, "a changed %s was reported as %s", disk.Path, map[bool]string{true: "unchanged (cached)", false: "rebuilt"}[again.Record.Cached])
}

// TestKilledBuildLeftoversAreReaped: staging folders of a build that died
// (no lock held) are removed by the next build.
func TestKilledBuildLeftoversAreReaped(t *testing.T) {
	f := newFixture(t)
	out := filepath.Join(f.root, "_out")
	require.NoError(t, os.MkdirAll(out, 0o755))

	stale := filepath.Join(out, ".edge.building-4242")
	require.NoError(t, os.Mkdir(stale, 0o755))
	require.NoError(t, os.WriteFile(stale+".lock", nil, 0o644)) // its builder is gone: nobody holds it

	_, err := f.build(t, out, false)
	require.NoError(t, err)
	require.NoDirExists(t, stale)
	require.NoFileExists(t, stale+".lock")

	entries, err := os.ReadDir(out)
	require.NoError(t, err)

	for _, e := range entries {
		require.Equal(t, "edge", e.Name(), "left in %s after a build", out)
	}
}

// TestInspectTiesPCRSigToSections: the UKI Talos's imager signed passes
// inspect's PCR 11 prediction (Talos's own measurement is the oracle);
// the same UKI with another .cmdline, Authenticode re-signed, fails it.
func TestInspectTiesPCRSigToSections(t *testing.T) {
	f := newFixture(t)

	res, err := f.build(t, filepath.Join(f.root, "_out"), false)
	require.NoError(t, err)

	uki := filepath.Join(res.Dir, "edge.efi")
	cert := filepath.Join(f.keys, keys.UKISigningCertFile)

	r, err := inspect.Inspect(uki, inspect.Options{CertPath: cert})
	require.NoError(t, err)
	require.NotEmpty(t, r.PE.PCRSignature)

	for bank, entries := range r.PE.PCRSignature {
		for _, e := range entries {
			require.NotNil(t, e.MatchesSections, bank)
			require.True(t, *e.MatchesSections, "%s policy %s: Talos's signed policy not predicted from the sections", bank, e.Pol)
		}
	}

	_, ok, failures := r.Verification()
	require.True(t, ok, failures)

	// Change .cmdline in place (same length) and re-sign for Secure Boot.
	data, err := os.ReadFile(uki)
	require.NoError(t, err)

	pf, err := pe.NewFile(bytes.NewReader(data))
	require.NoError(t, err)

	s := pf.Section(".cmdline")
	require.NotNil(t, s)
	i := bytes.Index(data[s.Offset:s.Offset+s.Size], []byte("console="))
	require.GreaterOrEqual(t, i, 0)
	copy(data[int(s.Offset)+i:], "consolX=")
	pf.Close()

	off, size := signatureRange(t, data)
	require.Equal(t, len(data), off+size, "certificate table is not at the end")
	unsigned := data[:off]
	// Clear the security directory entry (its offset in the optional header).
	secEntry := bytes.Index(unsigned, binaryLE(uint32(off), uint32(size)))
	require.Greater(t, secEntry, 0)
	copy(unsigned[secEntry:], make([]byte, 8))

	bin, err := authenticode.Parse(bytes.NewReader(unsigned))
	require.NoError(t, err)

	ks, err := keys.Load(f.keys)
	require.NoError(t, err)

	key, crt := loadSigner(t, ks.UKISigningKey, ks.UKISigningCert)
	_, err = bin.Sign(key, crt)
	require.NoError(t, err)

	resigned := filepath.Join(t.TempDir(), "resigned.efi")
	require.NoError(t, os.WriteFile(resigned, bin.Bytes(), 0o644))

	r, err = inspect.Inspect(resigned, inspect.Options{CertPath: cert})
	require.NoError(t, err)
	require.True(t, r.PE.Verification.Verified, "re-signed Authenticode must verify: %s", r.PE.Verification.Error)

	_, ok, failures = r.Verification()
	require.False(t, ok)
	require.Contains(t, strings.Join(failures, "\n"), "pcrsig mismatch")
}

func binaryLE(a, b uint32) []byte {
	out := make([]byte, 8)
	binary.LittleEndian.PutUint32(out, a)
	binary.LittleEndian.PutUint32(out[4:], b)

	return out
}

func loadSigner(t *testing.T, keyPath, certPath string) (crypto.Signer, *x509.Certificate) {
	t.Helper()

	kb, err := os.ReadFile(keyPath)
	require.NoError(t, err)
	block, _ := pem.Decode(kb)
	require.NotNil(t, block)

	var key crypto.Signer
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		key = k
	} else {
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		require.NoError(t, err)
		key = k.(crypto.Signer)
	}

	cb, err := os.ReadFile(certPath)
	require.NoError(t, err)
	block, _ = pem.Decode(cb)
	require.NotNil(t, block)
	crt, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)

	return key, crt
}

// cancelAt cancels the build 100 ms into the named step, as Ctrl-C would.
type cancelAt struct {
	step      string
	cancel    context.CancelFunc
	cancelled chan time.Time
}

func (c *cancelAt) StepStart(name string) {
	if name == c.step {
		go func() {
			time.Sleep(100 * time.Millisecond)
			c.cancelled <- time.Now()
			c.cancel()
		}()
	}
}

func (c *cancelAt) StepDone(string, time.Duration, error) {}

// TestCancelKeepsPreviousOutputs: Ctrl-C (a cancelled context) during any
// step of a forced rebuild returns within a second, reports the
// cancellation, leaves the previous outputs as they were and no scratch
// folders behind.
func TestCancelKeepsPreviousOutputs(t *testing.T) {
	f := newFixture(t)
	out := filepath.Join(f.root, "_out")

	first, err := f.build(t, out, false)
	require.NoError(t, err)

	before, err := os.ReadFile(filepath.Join(first.Dir, record.FileName))
	require.NoError(t, err)

	// The installer is written beside the disk (one step reported after
	// the other): Ctrl-C during "write disk image" interrupts both.
	for _, step := range []string{"resolve base", "assemble and sign UKI", "write disk image"} {
		t.Run(step, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()

			c := &cancelAt{step: step, cancel: cancel, cancelled: make(chan time.Time, 1)}

			_, err := build.Build(ctx, f.def, build.Options{
				Root: f.root, OutDir: out, Baker: staticBaker{config: bootstrapConfig}, Force: true,
				ToolsPath: filepath.Join(f.assets, "tools", "bin"), Progress: c,
			})
			returned := time.Now()

			select {
			case at := <-c.cancelled:
				require.Less(t, returned.Sub(at), time.Second, "the build ran on after Ctrl-C")

				if err == nil {
					// Ctrl-C came after the new outputs were moved into place:
					// the build is complete, nothing to keep.
					t.Logf("cancelled after the outputs were in place")

					return
				}

				require.ErrorIs(t, err, context.Canceled)
			default:
				t.Skipf("step %q ended within 100 ms: nothing to interrupt (err %v)", step, err)
			}

			now, err := os.ReadFile(filepath.Join(first.Dir, record.FileName))
			require.NoError(t, err)
			require.Equal(t, before, now, "previous outputs changed")

			entries, err := os.ReadDir(out)
			require.NoError(t, err)

			for _, e := range entries {
				require.Equal(t, "edge", e.Name(), "left in %s after a cancelled build", out)
			}
		})
	}
}

// TestBuildWithPKCS8KeysWritesNoKeyCopy: PKCS#8 keys (what openssl genpkey
// writes) sign the UKI from memory; nothing is written under HOME,
// XDG_CACHE_HOME or a cache dir (finding 6 of issue 9: main wrote PKCS#1
// copies into ~/.cache/labfleet/keys-pkcs1).
func TestBuildWithPKCS8KeysWritesNoKeyCopy(t *testing.T) {
	f := newFixture(t)

	for _, name := range []string{keys.UKISigningKeyFile, keys.PCRSigningKeyFile} {
		p := filepath.Join(f.keys, name)
		k, _, err := keys.ReadPrivateKey(p)
		require.NoError(t, err)

		der, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	}

	home := t.TempDir()
	t.Setenv("HOME", filepath.Join(home, "home"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(home, "cache"))
	t.Setenv("LABFLEET_KEYS_CACHE", filepath.Join(home, "keys-cache"))

	res, err := f.build(t, filepath.Join(f.root, "_out"), true)
	require.NoError(t, err)

	leftovers, err := os.ReadDir(home)
	require.NoError(t, err)
	require.Empty(t, leftovers, "nothing may be written outside the keys folder and the outputs")

	uki, _ := res.Record.Output("uki")
	p, err := pe.Open(filepath.Join(res.Dir, uki.Path))
	require.NoError(t, err)
	require.NotNil(t, p.Section(".pcrsig"))
	p.Close()

	if _, err := exec.LookPath("sbverify"); err == nil {
		out, err := exec.Command("sbverify", "--cert", filepath.Join(f.keys, keys.UKISigningCertFile), filepath.Join(res.Dir, uki.Path)).CombinedOutput()
		require.NoError(t, err, "sbverify: %s", out)
	}
}
