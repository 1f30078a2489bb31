package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/lab/harness"
	"github.com/labfleet/labfleet/lab/harness/testimage"
	"github.com/labfleet/labfleet/lab/labbase"
)

// run executes labctl in-process and returns stdout and the exit code.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()

	var out, errb bytes.Buffer

	cmd := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errb)

	err := cmd.ExecuteContext(t.Context())
	if err != nil {
		t.Logf("labctl %v: %v\nstderr: %s", args, err, errb.String())

		return out.String(), exitCode(err)
	}

	return out.String(), exitOK
}

func TestUsageErrors(t *testing.T) {
	state := t.TempDir()

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"up without disk", []string{"up"}},
		{"up missing disk", []string{"up", "/nonexistent.raw"}},
		{"bad output", []string{"ps", "-o", "yaml"}},
		{"down unknown", []string{"down", "nosuch"}},
		{"console unknown", []string{"console", "nosuch"}},
		{"tpm flags clash", []string{"up", "labctl_test.go", "--no-tpm", "--tpm-state", "/tmp/x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, code := run(t, append(tc.args, "--state-dir", state)...)
			assert.Equal(t, exitUsage, code)
		})
	}
}

func TestPsEmpty(t *testing.T) {
	out, code := run(t, "ps", "-o", "json", "--state-dir", t.TempDir())
	require.Equal(t, exitOK, code)
	assert.JSONEq(t, "[]", out)
}

func need(t *testing.T, what string, err error) {
	t.Helper()

	if err == nil {
		return
	}

	if os.Getenv("CI") == "true" {
		t.Fatalf("%s missing in CI: %v", what, err)
	}

	t.Skipf("%s missing: %v", what, err)
}

var disks sync.Map // init kind -> disk path

// testDisk builds a bootable (unsigned, Setup Mode) disk whose /init is
// either the trivial init (powers off, never reports status) or fakelabos
// (reports healthy, then idles).
func testDisk(t *testing.T, kind string) string {
	t.Helper()

	for _, bin := range []string{"qemu-system-x86_64", "qemu-img", "swtpm", "objcopy"} {
		_, err := exec.LookPath(bin)
		need(t, bin, err)
	}

	repo, err := labbase.FindRepoDir()
	require.NoError(t, err)

	assets, err := labbase.LoadAssets(labbase.DefaultAssetsDir(repo))
	need(t, "lab assets (hack/fetch-lab-assets.sh)", err)

	if p, ok := disks.Load(kind); ok {
		return p.(string)
	}

	dir, err := os.MkdirTemp("", "labctl-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) }) //nolint:errcheck

	opts := labbase.Options{AssetsDir: assets.Dir, OutDir: dir, Version: "test"}

	if kind == "trivial" {
		opts.TrivialInit = true
	} else {
		bin := filepath.Join(dir, "fakelabos")
		cmd := exec.Command("go", "build", "-o", bin, "./lab/cmd/labctl/testdata/fakelabos")
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))

		opts.LabosBinary = bin
	}

	res, err := labbase.Build(context.Background(), opts)
	require.NoError(t, err)

	disk := filepath.Join(dir, kind+".raw")
	require.NoError(t, testimage.Disk(context.Background(), testimage.Options{
		Stub: assets.SystemdStub, Boot: assets.SystemdBoot, Kernel: assets.Vmlinuz,
		Initramfs: res.InitramfsPath, Cmdline: "console=ttyS0 quiet",
	}, disk))

	disks.Store(kind, disk)

	return disk
}

func TestUpDetachPsConsoleDown(t *testing.T) {
	disk := testDisk(t, "fake")
	state := t.TempDir()

	out, code := run(t, "up", disk, "--name", "n1", "--detach", "-o", "json", "--state-dir", state, "--timeout", "2m")
	require.Equal(t, exitOK, code, out)

	var res upResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	assert.True(t, res.Healthy)
	assert.True(t, res.Detached)
	assert.Equal(t, "fake", res.Version, "reported by the guest")
	assert.Positive(t, res.BootSeconds)
	assert.Equal(t, 1, res.FirmwareBoots)
	assert.Regexp(t, `^127\.0\.0\.1:\d+$`, res.APIEndpoint)

	inst, err := harness.LoadInstance(filepath.Join(state, "n1"))
	require.NoError(t, err)
	t.Cleanup(func() { inst.Stop(context.Background(), 0) }) //nolint:errcheck
	require.True(t, inst.Running(), "detached VM keeps running")

	out, code = run(t, "ps", "-o", "json", "--state-dir", state)
	require.Equal(t, exitOK, code)

	var ps []psEntry
	require.NoError(t, json.Unmarshal([]byte(out), &ps))
	require.Len(t, ps, 1)
	assert.True(t, ps[0].Running)
	assert.Equal(t, res.APIEndpoint, ps[0].APIEndpoint)

	// A running node cannot be booted twice.
	_, code = run(t, "up", disk, "--name", "n1", "--state-dir", state)
	assert.Equal(t, exitUsage, code)

	out, code = run(t, "console", "n1", "--state-dir", state)
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "LABOS: status")

	_, code = run(t, "down", "n1", "--purge", "--state-dir", state)
	require.Equal(t, exitOK, code)
	assert.False(t, inst.Running(), "down stops QEMU")
	assert.NoDirExists(t, filepath.Join(state, "n1"))
	assert.NoDirExists(t, inst.SocketDir)
}

func TestUpWithoutStatusExits3(t *testing.T) {
	disk := testDisk(t, "trivial")

	_, code := run(t, "up", disk, "--no-tpm", "--state-dir", t.TempDir(), "--timeout", "2m")
	assert.Equal(t, exitNoBoot, code, "the trivial init powers off without a status")
}

// gen-config writes the hub's copy of a node config once, 0600, and never
// over a file that exists; up behind the hub refuses to deliver a config
// itself, saying why.
func TestGenConfigAndHubFlags(t *testing.T) {
	b, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	require.NoError(t, err)

	sdata, err := yaml.Marshal(b)
	require.NoError(t, err)

	keys := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(keys, "secrets.yaml"), sdata, 0o600))

	out := filepath.Join(t.TempDir(), "controlplane.yaml")

	_, code := run(t, "gen-config", "--keys", keys, "--out", out)
	require.Equal(t, exitOK, code)

	fi, err := os.Stat(out)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "it holds the machine CA key")

	data, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Contains(t, string(data), "machine:")

	var errb bytes.Buffer

	cmd := newRootCommand()
	cmd.SetArgs([]string{"gen-config", "--keys", keys, "--out", out})
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&errb)
	err = cmd.ExecuteContext(t.Context())
	require.ErrorContains(t, err, "exists: remove it first")
	assert.Equal(t, exitUsage, exitCode(err))

	after, _ := os.ReadFile(out)
	assert.Equal(t, data, after, "the existing config is untouched")

	cmd = newRootCommand()
	cmd.SetArgs([]string{"up", "labctl_test.go", "--hub-port", "8099", "--keys", keys, "--state-dir", t.TempDir()})
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&errb)
	err = cmd.ExecuteContext(t.Context())
	require.ErrorContains(t, err, "--hub-port: nothing reaches the guest but the hub")
	assert.Equal(t, exitUsage, exitCode(err))
}
