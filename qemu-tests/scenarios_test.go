package qemutests

import (
	"bytes"
	"context"
	"debug/pe"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/lab/harness"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// scenario starts a scenario: it fails at once if the fixtures could not be
// built, and records the scenario's result and time for the summary table.
func scenario(t *testing.T) context.Context {
	t.Helper()

	if setupError != nil {
		t.Fatalf("fixtures: %v", setupError)
	}

	start := time.Now()
	t.Cleanup(func() {
		w := slotWaited(t.Name())
		suite.record(t.Name(), !t.Failed(), time.Since(start)-w, w)
	})

	// generous: every scenario starts at once and waits its turn for the
	// two VM slots, and a machine's waits (each bounded on its own) come
	// after that turn
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	t.Cleanup(cancel)

	return ctx
}

var (
	goldenOnce sync.Once
	golden     *Machine
	goldenErr  string
)

// Golden is a v1 machine after its first two boots: keys enrolled from
// Setup Mode, STATE created and sealed, powered off cleanly. Scenarios clone it.
func Golden(t *testing.T) *Machine {
	t.Helper()

	goldenOnce.Do(func() {
		ok := t.Run("first boot: enroll keys, seal STATE", func(t *testing.T) {
			ctx := scenario(t)
			m := suite.NewMachine(t, "golden", "v1")
			vmPriority(t, prioGolden)
			vm := m.Boot(ctx, BootOptions{NoConfig: true})

			// the image carries no machine config: after sealing STATE the
			// node waits in maintenance mode and takes exactly one config
			_, err := vm.WaitMarker(ctx, nodeapi.MarkerMaintenance)
			require.NoError(t, err, "the first boot must wait for its config (console: %s)", vm.ConsolePath())
			deliverConfigOnce(ctx, t, vm.APIEndpoint())

			st := m.WaitStatus(ctx)
			require.True(t, st.Configured, "the node must run on the delivered config")
			require.Equal(t, "1.0.0", st.Version)
			require.True(t, st.SecureBoot, "Secure Boot must be on after enrollment")
			require.False(t, st.SetupMode, "Setup Mode must be off after enrollment")
			require.True(t, st.StateFormatted, "first boot creates STATE")
			require.True(t, st.TPMUnlocked)
			require.True(t, st.Healthy, "checks: %+v", st.Checks)
			require.True(t, st.Blessed)
			require.Equal(t, 1, st.StateBoots)
			require.NotEmpty(t, st.StateToken)
			goldenToken = st.StateToken
			goldenStatus = st

			// what a client of a Talos node reads: Version and COSI resources
			ns := m.NodeState(ctx)
			require.Equal(t, "v1.14.1", ns.TalosVersion)
			require.Equal(t, "1.0.0", ns.ImageVersion)
			require.True(t, ns.SecureBoot, "SecurityState: Secure Boot enforced")
			require.True(t, ns.StateEncrypted, "VolumeStatus STATE: LUKS2")
			require.NoError(t, ns.Check(), "running, ready, STATE ready: %+v", ns)
			require.Equal(t, st.BootEntry, ns.BootEntry)

			m.PowerOffClean(ctx)
			golden = m
		})
		if !ok {
			goldenErr = "the golden machine's first boot failed (see its subtest)"
		}
	})

	if golden == nil {
		t.Fatal(goldenErr)
	}

	return golden
}

// deliverConfigOnce plays the maintenance-mode client: a malformed config
// and a config without machine identity are refused with their reason, the
// suite's config is taken, and a second one is refused.
func deliverConfigOnce(ctx context.Context, t *testing.T, endpoint string) {
	t.Helper()

	_, err := harness.ApplyConfigAt(ctx, endpoint, []byte("version: [unclosed"), false)
	require.Equal(t, codes.InvalidArgument, status.Code(err), "malformed YAML: %v", err)
	require.ErrorContains(t, err, "machine config:")

	_, err = harness.ApplyConfigAt(ctx, endpoint, []byte("apiVersion: v1alpha1\nkind: KubeInlineManifestConfig\nname: x\nmanifest: y\n"), false)
	require.Equal(t, codes.InvalidArgument, status.Code(err), "config without v1alpha1: %v", err)
	require.ErrorContains(t, err, "no v1alpha1 document")

	r, err := harness.ApplyConfigAt(ctx, endpoint, suite.NodeConfig, true)
	require.NoError(t, err, "dry run")
	require.Contains(t, r.Messages[0].ModeDetails, "Dry run")

	_, err = harness.ApplyConfigAt(ctx, endpoint, suite.NodeConfig, false)
	require.NoError(t, err, "delivering the config")

	// the maintenance API is gone: an unauthenticated client cannot
	// configure the node again, whatever it sends
	_, err = harness.ApplyConfigAt(ctx, endpoint, suite.NodeConfig, false)
	require.ErrorContains(t, err, "certificate required", "a second config must be refused: only the mTLS API answers now")
}

// PowerOffClean shuts the node down through the API and waits for QEMU to exit.
func (m *Machine) PowerOffClean(ctx context.Context) {
	m.t.Helper()

	c := m.Client(ctx)
	_, err := c.ShutdownWithResponse(ctx)
	require.NoError(m.t, err)

	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	require.NoError(m.t, m.vm.Wait(wctx), "%s did not power off", m.Name)
	m.stopped()
}

func ukiEntry(t *testing.T, m *Machine) string {
	t.Helper()

	for _, n := range m.ESPList("/EFI/Linux") {
		if strings.HasSuffix(strings.ToLower(n), ".efi") {
			return "/EFI/Linux/" + n
		}
	}

	t.Fatalf("no UKI on %s's ESP", m.Name)

	return ""
}

// stripSignature removes the Authenticode certificate table.
func stripSignature(t *testing.T, data []byte) []byte {
	t.Helper()

	out, err := unsign(data)
	require.NoError(t, err)

	return out
}

// flipSectionByte changes one byte inside a section, after signing.
func flipSectionByte(t *testing.T, data []byte, section string) []byte {
	t.Helper()

	f, err := pe.NewFile(bytes.NewReader(data))
	require.NoError(t, err)

	s := f.Section(section)
	require.NotNil(t, s, "no %s section", section)

	out := append([]byte(nil), data...)
	out[s.Offset+s.Size/2] ^= 0x01

	return out
}

// Refusal lines: the firmware's, when it refuses systemd-boot itself, and
// systemd-boot's, when it refuses a UKI.
var (
	firmwareRefusal = regexp.MustCompile(`BdsDxe: failed to load Boot\S+ .*Access Denied`)
	sdbootRefusal   = regexp.MustCompile(`(?i)Error loading .*\.efi: Access Denied`)
	// Any sign that a kernel started: the EFI stub's or the kernel's own
	// first line, or labos.
	kernelStarted = regexp.MustCompile(`EFI stub: |Linux version |` + regexp.QuoteMeta(nodeapi.MarkerPrefix))
)

// requireRefused boots m and expects refusal by the given line, then
// watches what the firmware tries next: no kernel may start at any point.
func requireRefused(ctx context.Context, t *testing.T, m *Machine, refusal *regexp.Regexp) {
	t.Helper()

	vm := m.Boot(ctx, BootOptions{})
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	line, err := vm.WaitConsole(wctx, refusal)
	require.NoError(t, err, "expected the image to be refused by %q (console: %s)", refusal, vm.ConsolePath())
	t.Logf("refused: %s", strings.TrimSpace(line))

	// whatever the firmware or systemd-boot tries after the refusal
	// (other boot options, a fallback entry) must not start a kernel either
	after, cancelAfter := context.WithTimeout(ctx, 15*time.Second)
	defer cancelAfter()

	started, err := vm.WaitConsole(after, kernelStarted)
	require.Error(t, err, "a kernel started after the refusal: %q (console: %s)", started, vm.ConsolePath())

	for _, l := range vm.Lines() {
		require.False(t, kernelStarted.MatchString(l), "a kernel started although the image was refused: %q", l)
	}
}

// Scenario 1: Secure Boot refuses anything we did not sign.
func TestSecureBoot(t *testing.T) {
	t.Parallel()

	g := Golden(t)

	sdboot, err := os.ReadFile(filepath.Join(suite.Root, "_cache", "lab-assets", "systemd-boot.efi"))
	require.NoError(t, err)

	rogueUKI, err := os.ReadFile(filepath.Join(suite.Images["v1-rogue"].Dir, "labos.efi"))
	require.NoError(t, err)

	for _, tc := range []struct {
		name    string
		tamper  func(t *testing.T, m *Machine)
		refusal *regexp.Regexp
	}{
		{"unsigned UKI", func(t *testing.T, m *Machine) {
			p := ukiEntry(t, m)
			m.ESPWrite(p, stripSignature(t, m.ESPRead(p)))
		}, sdbootRefusal},
		{"UKI cmdline changed after signing", func(t *testing.T, m *Machine) {
			p := ukiEntry(t, m)
			m.ESPWrite(p, flipSectionByte(t, m.ESPRead(p), ".cmdline"))
		}, sdbootRefusal},
		{"UKI initrd changed after signing", func(t *testing.T, m *Machine) {
			p := ukiEntry(t, m)
			m.ESPWrite(p, flipSectionByte(t, m.ESPRead(p), ".initrd"))
		}, sdbootRefusal},
		{"UKI signed by a key not in db", func(t *testing.T, m *Machine) {
			m.ESPWrite(ukiEntry(t, m), rogueUKI)
		}, sdbootRefusal},
		{"unsigned systemd-boot", func(t *testing.T, m *Machine) {
			m.ESPWrite("/EFI/BOOT/BOOTX64.EFI", sdboot)
		}, firmwareRefusal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := scenario(t)
			m := g.Clone(t, "sb")
			tc.tamper(t, m)
			requireRefused(ctx, t, m, tc.refusal)
		})
	}
}

// Scenario 2: the STATE key is released by the TPM only to our signed
// images on this machine with Secure Boot on, and only before start-the-world.
func TestTPMUnlock(t *testing.T) {
	t.Parallel()

	g := Golden(t)

	pcr2UKI, err := os.ReadFile(filepath.Join(suite.Images["v1-pcr2"].Dir, "labos.efi"))
	require.NoError(t, err)

	t.Run("reboot unlocks and data survives", func(t *testing.T) {
		t.Parallel()
		ctx := scenario(t)
		m := g.Clone(t, "reboot")
		m.Boot(ctx, BootOptions{})

		st := m.WaitStatus(ctx)
		require.True(t, st.TPMUnlocked, "unlock error: %s", st.UnlockError)
		require.False(t, st.StateFormatted, "STATE must be reused, not recreated")
		require.Equal(t, 2, st.StateBoots, "the boot counter written on STATE by the first boot must be read back")
		require.Equal(t, g.stateToken(t), st.StateToken, "data written on first boot must read back intact")
		require.True(t, st.UnsealAfterStartRefused, "the TPM must refuse the key after start-the-world")
		require.True(t, st.Healthy)

		ns := m.NodeState(ctx)
		require.NoError(t, ns.Check(), "the API must say running, ready, STATE unlocked: %+v", ns)
	})

	for _, tc := range []struct {
		name       string
		prepare    func(t *testing.T, m *Machine)
		boot       BootOptions
		secureBoot bool
		reason     string // the TPM's refusal, as labos classifies it
	}{
		// Firmware reset to Setup Mode (Secure Boot off) with the auto-enroll
		// keys taken off the ESP so nothing re-enables it: the image boots
		// unverified, PCR 7 differs, and the key must stay sealed.
		{"Secure Boot off (PCR 7 differs)", func(t *testing.T, m *Machine) {
			for _, k := range []string{"PK", "KEK", "db"} {
				m.ESPRemove("/loader/keys/auto/" + k + ".auth")
			}
		}, BootOptions{ResetFirmware: true}, false, "pcr7-or-key-changed"},
		{"image signed with another PCR key", func(t *testing.T, m *Machine) { m.ESPWrite(ukiEntry(t, m), pcr2UKI) }, BootOptions{}, true, "pcr7-or-key-changed"},
		{"disk moved to another TPM", nil, BootOptions{FreshTPM: true}, true, "srk-changed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := scenario(t)
			m := g.Clone(t, "refuse")
			if tc.prepare != nil {
				tc.prepare(t, m)
			}

			m.Boot(ctx, tc.boot)
			st := m.WaitStatus(ctx)
			require.Equal(t, tc.secureBoot, st.SecureBoot)
			require.Equal(t, !tc.secureBoot, st.SetupMode)
			require.False(t, st.TPMUnlocked, "STATE must stay locked")
			require.NotEmpty(t, st.UnlockError, "the node must say why it could not unlock")
			require.False(t, st.StateFormatted, "a failed unlock must never reformat STATE")
			require.False(t, st.Healthy)
			require.True(t, strings.HasPrefix(st.UnlockError, tc.reason+":"), "want reason %s, got %q", tc.reason, st.UnlockError)
			require.False(t, st.Configured, "a locked STATE holds the config: the node must not run on any")
			t.Logf("unlock refused: %s", st.UnlockError)
		})
	}
}

// stateToken is the token labos wrote on STATE at first boot (read from
// the golden machine's first status).
func (m *Machine) stateToken(t *testing.T) string {
	t.Helper()
	require.NotEmpty(t, goldenToken, "golden machine reported no state token")

	return goldenToken
}

var (
	goldenToken  string
	goldenStatus nodeapi.Status
)

// The booted lab image carries all four add-ons, with the images pinned in
// the build record (labos reads the embedded config and the Talos image cache on IMAGECACHE).
func TestBakedAddons(t *testing.T) {
	t.Parallel()
	Golden(t)
	scenario(t)

	rec := suite.Images["v1"].Record
	require.Len(t, rec.Addons, 4, "the lab image bakes cilium, metallb, otel-collector and thanos")

	booted := map[string]nodeapi.Addon{}
	for _, a := range goldenStatus.Addons {
		booted[a.Name] = a
	}

	for _, want := range rec.Addons {
		got, ok := booted[want.Name]
		require.True(t, ok, "add-on %s is not in the booted image (node reports %v)", want.Name, goldenStatus.Addons)
		require.NotEmpty(t, got.Manifests, "%s: no manifests found", want.Name)

		for _, img := range want.Images {
			require.Contains(t, got.Images, img.Ref+"@"+img.Digest, "%s: image %s not in the booted image's cache", want.Name, img.Ref)
		}
	}
}

// upgrade asks the node to upgrade to a variant's installer image.
func upgrade(ctx context.Context, t *testing.T, m *Machine, variant string) {
	t.Helper()

	ref := suite.PushInstaller(t, variant)
	_, err := m.Client(ctx).UpgradeWithOptions(ctx, client.WithUpgradeImage(ref))
	require.NoError(t, err, "upgrade to %s", ref)
}

// waitVersion waits for a status from the given version, skipping others.
func waitVersion(ctx context.Context, t *testing.T, m *Machine, version string, maxStatuses int) nodeapi.Status {
	t.Helper()

	var seen []string

	for range maxStatuses {
		st := m.WaitStatus(ctx)
		if st.Version == version {
			return st
		}

		seen = append(seen, st.Version)
	}

	t.Fatalf("%s never reported version %s (saw %v; console %s)", m.Name, version, seen, m.vm.ConsolePath())

	return nodeapi.Status{}
}

// Scenario 3: upgrade through the node API (Talos 1.13+ image and lifecycle
// services), unlock without resealing, bless.
func TestUpgrade(t *testing.T) {
	// single-machine scenarios run side by side: two VM slots
	t.Parallel()

	g := Golden(t)
	ctx := scenario(t)
	m := g.Clone(t, "upgrade")
	m.Boot(ctx, BootOptions{})
	require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)

	// As talosctl upgrades a Talos 1.13+ node: ImageService.Pull, then
	// LifecycleService.Upgrade, then Reboot (the legacy Upgrade call is
	// exercised by the other upgrade scenarios and the fleet rollout).
	upgradeLifecycle(ctx, t, m, "v2")

	st := waitVersion(ctx, t, m, "2.0.0", 2)
	require.True(t, st.TPMUnlocked, "v2 (same PCR key) must unlock STATE: %s", st.UnlockError)
	require.False(t, st.StateFormatted)
	require.Equal(t, goldenToken, st.StateToken)
	require.True(t, st.Healthy, "checks: %+v", st.Checks)
	require.True(t, st.Blessed, "a healthy new entry is blessed")
	require.Contains(t, st.BootEntry, "2.0.0")

	m.PowerOffClean(ctx)
	require.Contains(t, m.ESPList("/EFI/Linux"), "labos-2.0.0.efi", "blessed entry keeps no boot counter")
	require.Contains(t, string(m.ESPRead("/loader/loader.conf")), "labos-2.0.0.efi", "a blessed entry becomes the exact default")
}

// Scenario 3b: six consecutive upgrades on the lab's 96 MiB ESP, each to
// a new version. Without housekeeping the 4th fails for lack of space;
// with it, the ESP keeps the running, previous and new entries only.
func TestSixUpgrades(t *testing.T) {
	// single-machine scenarios run side by side: two VM slots
	t.Parallel()

	g := Golden(t)
	ctx := scenario(t)
	vmPriority(t, prioLong)
	m := g.Clone(t, "six")
	m.Boot(ctx, BootOptions{})
	require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)

	for i, v := range []string{"v2", "v3", "v4", "v5", "v6", "v7"} {
		version := fmt.Sprintf("%d.0.0", i+2)

		upgrade(ctx, t, m, v)

		st := waitVersion(ctx, t, m, version, 2)
		require.True(t, st.Healthy, "upgrade %d to %s: checks %+v", i+1, version, st.Checks)
		require.True(t, st.Blessed)
		require.Equal(t, goldenToken, st.StateToken)
	}

	m.PowerOffClean(ctx)

	var entries []string

	for _, n := range m.ESPList("/EFI/Linux") {
		if strings.HasSuffix(strings.ToLower(n), ".efi") {
			entries = append(entries, n)
		}
	}

	// pruning happens when an upgrade is written: installing 7.0.0 kept the
	// running 6.0.0, the previous blessed 5.0.0 and the new entry
	require.ElementsMatch(t, []string{"labos-5.0.0.efi", "labos-6.0.0.efi", "labos-7.0.0.efi"}, entries,
		"after six upgrades the ESP keeps the entry under trial (now blessed), the one it replaced and the one before")
}

// Scenario 4: a bad upgrade falls back on its own; rollback returns to v1.
func TestFallback(t *testing.T) {
	t.Parallel()

	g := Golden(t)

	for _, variant := range []string{"v2-nouserspace", "v2-healthfail"} {
		t.Run(variant, func(t *testing.T) {
			t.Parallel()
			ctx := scenario(t)
			m := g.Clone(t, "fallback")
			m.Boot(ctx, BootOptions{})
			require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)

			upgrade(ctx, t, m, variant)

			st := waitVersion(ctx, t, m, "1.0.0", 3)
			require.True(t, st.Healthy)
			require.True(t, st.TPMUnlocked)
			require.NotEmpty(t, st.FailedUpgrades, "v1 must report the failed upgrade")
			require.Contains(t, strings.Join(st.FailedUpgrades, " "), "2.0.0")
		})
	}

	t.Run("rollback call", func(t *testing.T) {
		t.Parallel()
		ctx := scenario(t)
		m := g.Clone(t, "rollback")
		m.Boot(ctx, BootOptions{})
		require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)

		upgrade(ctx, t, m, "v2")
		st := waitVersion(ctx, t, m, "2.0.0", 2)
		require.True(t, st.Healthy)

		err := m.Client(ctx).Rollback(ctx)
		require.NoError(t, err)

		st = waitVersion(ctx, t, m, "1.0.0", 2)
		require.True(t, st.Healthy)
		require.True(t, st.TPMUnlocked)
	})
}

// Scenario 5: power is cut at each point of an upgrade and of its
// blessing; the next boot brings up a working image (old or new) with its
// data. The machine runs images that pause at every checkpoint
// (labos.pause), so the cut lands exactly there.
func TestPowerLoss(t *testing.T) {
	// single-machine scenarios run side by side: two VM slots
	t.Parallel()

	g := Golden(t)
	trials := soakTrials(t)

	for _, tc := range []struct {
		point  string // checkpoint marker to cut at ("blessed": the blessed marker)
		reboot bool   // the cut is on the new image's first boot
	}{
		{point: "before-write"},
		{point: "mid-write"},
		{point: "written"},
		{point: "renamed", reboot: true},
		{point: "blessed", reboot: true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			t.Parallel()

			for trial := range trials {
				powerCut(t, g, tc.point, tc.reboot, trial)
			}
		})
	}
}

func powerCut(t *testing.T, g *Machine, point string, onNewImage bool, trial int) {
	t.Helper()

	ctx := scenario(t)
	m := g.Clone(t, fmt.Sprintf("cut-%s-%d", point, trial))

	// the same machine, now running the pausing build of v1 (same keys
	// and PCR key, so STATE unlocks)
	pause, err := os.ReadFile(filepath.Join(suite.Images["v1-pause"].Dir, "labos.efi"))
	require.NoError(t, err)
	m.ESPWrite(ukiEntry(t, m), pause)

	vm := m.Boot(ctx, BootOptions{})
	require.Equal(t, "1.0.0", m.WaitStatus(ctx).Version)

	ref := suite.PushInstaller(t, "v2-pause")
	c := m.Client(ctx)

	go c.UpgradeWithOptions(ctx, client.WithUpgradeImage(ref)) //nolint:errcheck

	if onNewImage {
		_, err := vm.WaitMarker(ctx, nodeapi.MarkerRebooting)
		require.NoError(t, err, "the upgrade must reboot (console %s)", vm.ConsolePath())
	}

	waitCut(ctx, t, vm, point)
	require.NoError(t, vm.Kill(), "cutting power")
	m.PowerOff()

	m.Boot(ctx, BootOptions{})
	st := m.WaitStatus(ctx)
	require.Contains(t, []string{"1.0.0", "2.0.0"}, st.Version)
	require.True(t, st.TPMUnlocked, "unlock error: %s", st.UnlockError)
	require.True(t, st.Healthy, "checks: %+v", st.Checks)
	require.True(t, st.Configured, "the config kept on STATE must survive")
	require.Equal(t, goldenToken, st.StateToken)
	t.Logf("cut at %s (trial %d): the node runs %s", point, trial, st.Version)
}

// waitCut waits for the marker of a checkpoint.
func waitCut(ctx context.Context, t *testing.T, vm *harness.VM, point string) {
	t.Helper()

	if point == "blessed" {
		_, err := vm.WaitMarker(ctx, nodeapi.MarkerBlessed)
		require.NoError(t, err, "console %s", vm.ConsolePath())

		return
	}

	for {
		details, err := vm.WaitMarker(ctx, nodeapi.MarkerCheckpoint)
		require.NoError(t, err, "waiting for checkpoint %s (console %s)", point, vm.ConsolePath())

		if details == "point="+point {
			return
		}
	}
}

// soakTrials is how often each power-cut point is tried: once in make
// test, QEMU_TESTS_SOAK times in make soak.
func soakTrials(t *testing.T) int {
	t.Helper()

	v := os.Getenv("QEMU_TESTS_SOAK")
	if v == "" {
		return 1
	}

	n, err := strconv.Atoi(v)
	require.NoError(t, err, "QEMU_TESTS_SOAK=%q: want a number of trials", v)
	require.Positive(t, n, "QEMU_TESTS_SOAK")

	return n
}
