package qemutests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labfleet/labfleet/extensions/machineconfig"
	"github.com/labfleet/labfleet/images/bake"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/keys/hsm"
	"github.com/labfleet/labfleet/images/keys/hsm/hsmtest"
	"github.com/labfleet/labfleet/images/spec"
	"github.com/labfleet/labfleet/lab/labbase"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Suite holds what every scenario shares: keys, images, a registry. It is
// built once per test run (TestMain) and reused by all scenarios.
type Suite struct {
	Root, Work string

	Keys, RogueKeys, PCR2Keys string

	// HSMKeys is a keys folder whose private keys live in a SoftHSM2 token
	// (empty when this test binary was built without cgo: HSMError says why).
	HSMKeys  string
	HSMError error

	// NodeConfig is the control-plane machine config generated from Keys'
	// secrets; machines get it in maintenance mode on their first boot.
	NodeConfig []byte

	// Images by variant name: v1, v2, v2-nouserspace, v2-healthfail, v1-pcr2.
	Images map[string]*build.Result

	RegistryPort int
	registry     *http.Server

	started time.Time // when the fixtures started: the suite's wall time counts from here
	mu      sync.Mutex
	results []scenarioResult
}

type scenarioResult struct {
	name    string
	passed  bool
	seconds float64
	waited  float64
}

var suite *Suite

// setupError is set when the fixtures could not be built; every scenario then fails with it.
var setupError error

func TestMain(m *testing.M) {
	code := func() int {
		if err := preflight(); err != nil {
			if os.Getenv("CI") != "" {
				fmt.Fprintf(os.Stderr, "qemu-tests cannot run: %v\n", err)

				return 1
			}

			fmt.Fprintf(os.Stderr, "qemu-tests skipped (not CI): %v\n", err)

			return 0
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()

		start := time.Now()
		suite, setupError = newSuite(ctx)
		fmt.Fprintf(os.Stderr, "qemu-tests: fixtures ready in %.1fs (err=%v)\n", time.Since(start).Seconds(), setupError)

		code := m.Run()
		if suite != nil {
			suite.printSummary(os.Stdout)
			suite.close()
		}

		return code
	}()

	os.Exit(code)
}

// preflight says why the scenarios cannot run on this machine.
func preflight() error {
	for _, bin := range []string{"qemu-system-x86_64", "swtpm", "swtpm_setup", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed: run hack/install-deps.sh", bin)
		}
	}

	for _, f := range []string{"/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing: install the ovmf package (hack/install-deps.sh)", f)
		}
	}

	return nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}

	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}

		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("go.mod not found above %s", dir)
		}

		dir = filepath.Dir(dir)
	}
}

func newSuite(ctx context.Context) (*Suite, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}

	work := filepath.Join(root, "_out", "qemu-tests")
	if err := os.RemoveAll(work); err != nil {
		return nil, err
	}

	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}

	s := &Suite{Root: root, Work: work, Images: map[string]*build.Result{}, started: time.Now()}

	if err := s.makeKeys(); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}

	if err := s.makeNodeConfig(); err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}

	if _, err := labbase.Build(ctx, labbase.Options{RepoDir: root, OutDir: filepath.Join(work, "labbase"), Version: "1.0.0"}); err != nil {
		return nil, fmt.Errorf("lab base: %w", err)
	}

	if err := s.buildImages(ctx); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}

	if err := s.applyBreak(); err != nil {
		return nil, fmt.Errorf("breaking the build on purpose: %w", err)
	}

	if err := s.startRegistry(); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}

	return s, nil
}

func (s *Suite) makeKeys() error {
	s.Keys = filepath.Join(s.Work, "keys")
	s.RogueKeys = filepath.Join(s.Work, "rogue-keys")
	s.PCR2Keys = filepath.Join(s.Work, "pcr2-keys")

	if _, err := keys.Generate(s.Keys, keys.GenerateOptions{CommonName: "labfleet test"}); err != nil {
		return err
	}

	if _, err := keys.Generate(s.RogueKeys, keys.GenerateOptions{CommonName: "rogue"}); err != nil {
		return err
	}

	// Our db key but another PCR key: boots under Secure Boot, must not unlock.
	if err := copyDir(s.Keys, s.PCR2Keys); err != nil {
		return err
	}

	if err := copyFile(filepath.Join(s.RogueKeys, keys.PCRSigningKeyFile), filepath.Join(s.PCR2Keys, keys.PCRSigningKeyFile)); err != nil {
		return err
	}

	s.HSMError = s.makeHSMKeys()

	return nil
}

// makeHSMKeys makes a key set inside a fresh SoftHSM2 token (issue 11: an
// HSM-signed image must boot under enforced Secure Boot). The module reads
// SOFTHSM2_CONF when it loads, so this test process sets it.
func (s *Suite) makeHSMKeys() error {
	if !hsm.Available {
		return errors.New("qemu-tests built without cgo: run them with CGO_ENABLED=1 (make test does) to build the HSM-signed image")
	}

	cfg, conf, err := hsmtest.NewToken(filepath.Join(s.Work, "softhsm"))
	if err != nil {
		return err
	}

	os.Setenv("SOFTHSM2_CONF", conf) //nolint:errcheck

	tok, err := hsm.Open(cfg, hsmtest.PIN)
	if err != nil {
		return err
	}
	defer tok.Close() //nolint:errcheck

	s.HSMKeys = filepath.Join(s.Work, "hsm-keys")
	_, err = keys.Generate(s.HSMKeys, keys.GenerateOptions{CommonName: "labfleet hsm", Token: tok, PKCS11: cfg})

	return err
}

// variant describes one lab image build.
type variant struct {
	name, version, keys string
	extraArgs           []string
	outputs             []string // default: the definition's
	pin                 string   // PKCS#11 user PIN (HSM keys)
	force               bool     // build even when the cache has it
}

func (s *Suite) variants() []variant {
	vs := []variant{
		{name: "v1", version: "1.0.0", keys: s.Keys},
		{name: "v2", version: "2.0.0", keys: s.Keys},
		// The kernel finds no init and panics; panic=5 reboots it: systemd-boot
		// counts the failed tries and falls back.
		{name: "v2-nouserspace", version: "2.0.0", keys: s.Keys, extraArgs: []string{"rdinit=/no-such-init", "init=/no-such-init"}},
		{name: "v2-healthfail", version: "2.0.0", keys: s.Keys, extraArgs: []string{"labos.inject=health-fail"}},
		{name: "v1-pcr2", version: "1.0.0", keys: s.PCR2Keys},
		// power-cut tests: labos pauses at every checkpoint
		{name: "v1-pause", version: "1.0.0", keys: s.Keys, extraArgs: []string{"labos.pause=3s"}},
		{name: "v2-pause", version: "2.0.0", keys: s.Keys, extraArgs: []string{"labos.pause=3s"}},
		{name: "v1-rogue", version: "1.0.0", keys: s.RogueKeys},
		// six consecutive upgrades on the lab ESP (3.0.0 ... 7.0.0 after v2)
		{name: "v3", version: "3.0.0", keys: s.Keys, outputs: upgradeOnly},
		{name: "v4", version: "4.0.0", keys: s.Keys, outputs: upgradeOnly},
		{name: "v5", version: "5.0.0", keys: s.Keys, outputs: upgradeOnly},
		{name: "v6", version: "6.0.0", keys: s.Keys, outputs: upgradeOnly},
		{name: "v7", version: "7.0.0", keys: s.Keys, outputs: upgradeOnly},
		// v1 once more, built again (not from the cache) long after the
		// first: byte-identical (TestReleaseImagesBoot).
		{name: "v1-repro", version: "1.0.0", keys: s.Keys, force: true},
	}

	if s.HSMKeys != "" {
		vs = append(vs, variant{name: "v1-hsm", version: "1.0.0", keys: s.HSMKeys, pin: hsmtest.PIN})
	}

	return vs
}

// upgradeOnly is what an image reached only by upgrades needs: no disk.
var upgradeOnly = []string{spec.OutputUKI, spec.OutputInstaller}

// makeNodeConfig generates the config every machine receives after its
// first boot, with the lab definition's cluster settings.
func (s *Suite) makeNodeConfig() error {
	def, err := spec.Load(filepath.Join(s.Root, "images", "lab.yaml"))
	if err != nil {
		return err
	}

	s.NodeConfig, err = machineconfig.NodeConfig(machineconfig.Options{
		ClusterName: def.Cluster.Name, Endpoint: def.Cluster.Endpoint,
		SecretsPath: filepath.Join(s.Keys, "secrets.yaml"),
	}, "controlplane")

	return err
}

func (s *Suite) buildImages(ctx context.Context) error {
	baker := bake.New(s.Root)
	defer baker.Close()

	for _, v := range s.variants() {
		def, err := spec.Load(filepath.Join(s.Root, "images", "lab.yaml"))
		if err != nil {
			return err
		}

		def.Version = v.version
		def.Base.Layout = filepath.Join(s.Work, "labbase", "oci")
		def.Installer.Base.Layout = filepath.Join(s.Work, "labbase", "installer-base")
		def.Schematic.Customization.ExtraKernelArgs = append(def.Schematic.Customization.ExtraKernelArgs, v.extraArgs...)

		if v.outputs != nil {
			def.Outputs = v.outputs
		}

		res, err := build.Build(ctx, def, build.Options{
			Root: s.Root, OutDir: filepath.Join(s.Work, "images", v.name), KeysDir: v.keys, Baker: baker,
			ToolsPath: filepath.Join(s.Root, "_cache", "lab-assets", "tools", "bin"),
			PKCS11PIN: v.pin, Force: v.force,
		})
		if err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}

		s.Images[v.name] = res
	}

	return nil
}

// startRegistry serves installer images on 127.0.0.1; guests reach it as nodeapi.GuestRegistryAddr.
func (s *Suite) startRegistry() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}

	s.RegistryPort = ln.Addr().(*net.TCPAddr).Port
	s.registry = &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}

	go s.registry.Serve(ln) //nolint:errcheck

	return nil
}

// PushInstaller pushes a variant's installer image and returns the reference
// a guest uses to pull it (by digest, through the guest forward).
func (s *Suite) PushInstaller(t *testing.T, variant string) string {
	t.Helper()

	res := s.Images[variant]
	p, err := layout.FromPath(filepath.Join(res.Dir, "installer"))
	if err != nil {
		t.Fatalf("opening %s installer layout: %v", variant, err)
	}

	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatalf("reading installer index: %v", err)
	}

	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) != 1 {
		t.Fatalf("installer layout must hold one image: %v", err)
	}

	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatalf("reading installer image: %v", err)
	}

	repo := "labfleet/installer-" + variant
	tag, err := name.NewTag(fmt.Sprintf("127.0.0.1:%d/%s:%s", s.RegistryPort, repo, res.Record.Version), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("pushing installer: %v", err)
	}

	return fmt.Sprintf("%s/%s@%s", nodeapi.GuestRegistryAddr, repo, m.Manifests[0].Digest)
}

func (s *Suite) close() {
	if s.registry != nil {
		s.registry.Close() //nolint:errcheck
	}
}

func (s *Suite) record(name string, passed bool, d, waited time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.results = append(s.results, scenarioResult{name: name, passed: passed, seconds: d.Seconds(), waited: waited.Seconds()})
}

// printSummary prints each scenario's own time (without its wait for VM
// slots, which the next column shows) and the suite's wall time.
func (s *Suite) printSummary(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()

	sort.Slice(s.results, func(i, j int) bool { return s.results[i].name < s.results[j].name })

	var total float64

	fmt.Fprintln(w, "\nSUMMARY qemu-tests")
	fmt.Fprintf(w, "| %-50s | %-6s | %8s | %9s |\n", "scenario", "result", "seconds", "slot wait")
	fmt.Fprintf(w, "|%s|%s|%s|%s|\n", strings.Repeat("-", 52), strings.Repeat("-", 8), strings.Repeat("-", 10), strings.Repeat("-", 11))

	for _, r := range s.results {
		res := "pass"
		if !r.passed {
			res = "FAIL"
		}

		total += r.seconds
		fmt.Fprintf(w, "| %-50s | %-6s | %8.1f | %9.1f |\n", r.name, res, r.seconds, r.waited)
	}

	fmt.Fprintf(w, "| %-50s | %-6s | %8.1f | %9s |\n", "sum of scenario times", "", total, "")
	fmt.Fprintf(w, "| %-50s | %-6s | %8.1f | %9s |\n", "wall time (fixtures + scenarios)", "", time.Since(s.started).Seconds(), "")
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}

	st, err := os.Stat(src)
	if err != nil {
		return err
	}

	return os.WriteFile(dst, data, st.Mode().Perm())
}

func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}

	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}

	for _, e := range entries {
		if e.IsDir() {
			continue
		}

		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}

	return nil
}
