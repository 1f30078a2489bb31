package build_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/bake"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/spec"
	"github.com/labfleet/labfleet/lab/labbase"
)

// reproChild makes TestReproChild build instead of skipping: its value is a
// JSON reproRequest.
const reproChild = "LABFLEET_REPRO_CHILD"

type reproRequest struct {
	Root, Def, Keys, Out, Cache, Cwd, Tools string
	Umask                                   int
	Epoch                                   int64
}

// TestReproducibleAcrossProcesses builds images/lab.yaml (the four add-ons,
// the real lab base: Debian kernel + labos initramfs) in two separate
// processes, the second starting at least a second after the first ended
// (another wall clock in every timestamp), with different umask (022, 077),
// working directory, output and cache paths and TMPDIR, and the same inputs
// and SOURCE_DATE_EPOCH. Every output must be byte-identical: UKI, disk,
// installer (so its digest), build.json. Issue 11: signingTime = now in every
// Authenticode signature, and a umask 077 build differed in .initrd/.pcrsig.
func TestReproducibleAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the lab base and the lab image twice")
	}

	assets := labAssets(t)
	root := repoRoot(t)
	shared := t.TempDir()

	// Inputs both builds share: the lab base, the keys and the definition.
	lb, err := labbase.Build(context.Background(), labbase.Options{
		RepoDir: root, AssetsDir: assets, OutDir: filepath.Join(shared, "labbase"), Version: "1.0.0",
	})
	require.NoError(t, err)

	keyDir := filepath.Join(shared, "keys")
	_, err = keys.Generate(keyDir, keys.GenerateOptions{})
	require.NoError(t, err)

	data, err := os.ReadFile(filepath.Join(root, "images", "lab.yaml"))
	require.NoError(t, err)

	def := filepath.Join(shared, "lab.yaml")
	data = bytes.Replace(data, []byte("layout: _out/labbase/oci"), []byte("layout: "+lb.LayoutDir), 1)
	data = bytes.Replace(data, []byte("layout: _out/labbase/installer-base"), []byte("layout: "+lb.InstallerBaseDir), 1)
	require.NoError(t, os.WriteFile(def, data, 0o644))

	run := func(name string, umask int) string {
		dir := filepath.Join(t.TempDir(), name, "some", "deeper", "path")
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "tmp"), 0o755))

		req := reproRequest{
			Root: root, Def: def, Keys: keyDir, Out: filepath.Join(dir, "out"), Cache: filepath.Join(dir, "cache"),
			Cwd: dir, Tools: filepath.Join(assets, "tools", "bin"), Umask: umask, Epoch: 1700000000,
		}
		js, err := json.Marshal(req)
		require.NoError(t, err)

		cmd := exec.Command(os.Args[0], "-test.run=^TestReproChild$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), reproChild+"="+string(js), "TMPDIR="+filepath.Join(dir, "tmp"))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s build:\n%s", name, out)
		require.Contains(t, string(out), "--- PASS: TestReproChild", "%s build did not run:\n%s", name, out)

		return filepath.Join(req.Out, "labos")
	}

	a := run("a", 0o022)
	time.Sleep(1100 * time.Millisecond)
	b := run("b", 0o077)

	filesA, filesB := treeDigests(t, a), treeDigests(t, b)
	require.NotEmpty(t, filesA)

	for _, want := range []string{"labos.efi", "disk.raw", "build.json", "installer/index.json"} {
		require.Contains(t, filesA, want)
	}

	for name, da := range filesA {
		if db, ok := filesB[name]; !ok {
			t.Errorf("%s missing from the second build", name)
		} else if da != db {
			t.Errorf("%s differs between the two builds", name)
		}
	}

	for name := range filesB {
		if _, ok := filesA[name]; !ok {
			t.Errorf("%s only in the second build", name)
		}
	}

	if keep := os.Getenv("LABFLEET_REPRO_KEEP"); keep != "" && t.Failed() {
		// For a diff by hand: both output folders.
		require.NoError(t, os.CopyFS(filepath.Join(keep, "a"), os.DirFS(a)))
		require.NoError(t, os.CopyFS(filepath.Join(keep, "b"), os.DirFS(b)))
	}
}

// TestReproChild is the child of TestReproducibleAcrossProcesses.
func TestReproChild(t *testing.T) {
	js := os.Getenv(reproChild)
	if js == "" {
		t.Skip("run by TestReproducibleAcrossProcesses")
	}

	var req reproRequest
	require.NoError(t, json.Unmarshal([]byte(js), &req))

	syscall.Umask(req.Umask)
	require.NoError(t, os.Chdir(req.Cwd))

	data, err := os.ReadFile(req.Def)
	require.NoError(t, err)

	def, err := spec.Parse(req.Def, data)
	require.NoError(t, err)

	baker := bake.New(req.Root)
	t.Cleanup(baker.Close)

	_, err = build.Build(context.Background(), def, build.Options{
		Root: req.Root, OutDir: req.Out, CacheDir: req.Cache, KeysDir: req.Keys, Baker: baker,
		SourceDateEpoch: req.Epoch, Force: true, ToolsPath: req.Tools,
	})
	require.NoError(t, err)
}

// treeDigests maps every regular file under dir (relative, slash paths) to
// its sha256; the builder's own bookkeeping (StampsFile: inodes, mtimes) is left out.
func treeDigests(t *testing.T, dir string) map[string]string {
	out := map[string]string{}

	require.NoError(t, filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}

		rel, _ := filepath.Rel(dir, p)
		if rel == build.StampsFile {
			return nil
		}

		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}

		sum := sha256.Sum256(data)
		out[filepath.ToSlash(rel)] = hex.EncodeToString(sum[:]) + " " + strconv.Itoa(len(data))

		return nil
	}))

	return out
}
