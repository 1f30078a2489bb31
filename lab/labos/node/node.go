package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/lab/labos/addons"
	"github.com/labfleet/labfleet/lab/labos/api"
	"github.com/labfleet/labfleet/lab/labos/bootentry"
	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/labos/efivars"
	"github.com/labfleet/labfleet/lab/labos/health"
	"github.com/labfleet/labfleet/lab/labos/luks"
	"github.com/labfleet/labfleet/lab/labos/pcrphase"
	"github.com/labfleet/labfleet/lab/labos/state"
	"github.com/labfleet/labfleet/lab/labos/sysinit"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Paths and names inside the guest.
const (
	TPMDevice    = "/dev/tpmrm0"
	ESPMount     = "/efi"
	StateMount   = "/var"
	StateMapName = "state"
	VersionFile  = "/etc/labos/version"
	ModulesDir   = "/lib/modules"

	PartESP   = "EFI"
	PartState = "STATE"
	PartCache = "IMAGECACHE"
)

// Markers labos prints besides nodeapi's (proposed for nodeapi).
const (
	MarkerError          = nodeapi.MarkerError
	MarkerUpgradeWriting = nodeapi.MarkerUpgrading
)

// Node is the running system.
type Node struct {
	Out io.Writer // the console: markers go here
	Log *slog.Logger

	mu     sync.Mutex
	status nodeapi.Status
	start  time.Time

	cmdline  sysinit.Cmdline
	name     string
	efi      efivars.Store
	esp      *bootentry.ESP
	tpm      transport.TPMCloser
	mounts   []string
	sb       state.SecureBoot
	embedded *config.Machine // the image's bootstrap config: add-on manifests only
	machine  *config.Machine // the applied config (from STATE), with the embedded manifests
	parts    []sysinit.Partition
	disk     string

	// stateMounted is set once STATE is unlocked and mounted: only then can
	// a config be kept. configured is closed when one was applied.
	stateMounted bool
	configMu     sync.Mutex
	configured   chan struct{}

	actions chan action
	once    sync.Once

	// rt is what the node publishes through the Talos API (resources and
	// events); pulled holds the images ImageService.Pull brought.
	rt     *api.Runtime
	pulled pulledImages

	// opMu serialises ESP-changing API calls; pending is set once a reboot
	// is scheduled, after which further changes are refused.
	opMu    sync.Mutex
	pending atomic.Bool
}

// ErrInProgress answers an upgrade or rollback while another one runs or
// its reboot is pending (fleetctl recognises "in progress").
var ErrInProgress = errors.New("upgrade already in progress")

// begin takes the operation lock; it fails while another ESP change runs or
// a reboot is pending.
func (n *Node) begin() (func(), error) {
	if !n.opMu.TryLock() {
		return nil, ErrInProgress
	}

	if n.pending.Load() {
		n.opMu.Unlock()

		return nil, ErrInProgress
	}

	return n.opMu.Unlock, nil
}

type action struct{ powerOff bool }

// New returns a node writing markers to out.
func New(out io.Writer, log *slog.Logger) *Node {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	return &Node{Out: out, Log: log, start: time.Now(), actions: make(chan action, 1), configured: make(chan struct{})}
}

// marker prints a console marker with the uptime in front (the harness
// reads the boot's phases from these).
func (n *Node) marker(m, details string) {
	fmt.Fprintln(n.Out, nodeapi.FormatMarkerAt(sysinit.Uptime(), m, details))
}

func (n *Node) fatal(step string, err error) {
	n.marker(MarkerError, fmt.Sprintf("step=%s err=%q", step, err.Error()))
}

func (n *Node) update(f func(s *nodeapi.Status)) {
	n.mu.Lock()
	defer n.mu.Unlock()

	f(&n.status)
}

// Status implements api.Node.
func (n *Node) Status() nodeapi.Status {
	n.mu.Lock()
	defer n.mu.Unlock()

	s := n.status
	s.Checks = append([]nodeapi.Check(nil), s.Checks...)
	s.UptimeSeconds = time.Since(n.start).Seconds()

	return s
}

// Boot runs the boot sequence. Errors of single steps are reported as
// markers and in the status; Boot returns an error only when nothing more
// can be done, and even then the caller keeps PID 1 alive.
func (n *Node) Boot(ctx context.Context) error {
	// the kernel starts init with no PATH; cryptsetup and mke2fs live in /usr/sbin
	_ = os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")

	for _, m := range sysinit.EarlyMounts {
		if err := m.Do(); err != nil {
			return err
		}
	}

	_ = sysinit.Console()

	cmdline, err := sysinit.ReadCmdline()
	if err != nil {
		return fmt.Errorf("reading kernel command line: %w", err)
	}

	n.cmdline = cmdline
	version := n.version()
	n.update(func(s *nodeapi.Status) { s.Version = version })
	n.marker(nodeapi.MarkerInit, "version="+version)

	if rt, err := api.NewRuntime(); err != nil {
		n.fatal("runtime", err)
	} else {
		n.rt = rt
		rt.Sequence("boot", machine.SequenceEvent_START)
		n.publish("version", func(rt *api.Runtime) error { return rt.SetVersion(TalosTag) })
		n.publish("boot-id", func(rt *api.Runtime) error {
			id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
			if err != nil {
				return fmt.Errorf("reading the boot ID: %w", err)
			}

			return rt.SetBootID(strings.TrimSpace(string(id)))
		})
		n.publish("machine-status", func(rt *api.Runtime) error {
			return rt.SetMachineStatus(runtime.MachineStageBooting, []runtime.UnmetCondition{{Name: "boot", Reason: "booting"}})
		})
	}

	// TPM drivers are built into the Debian kernel: extend enter-initrd
	// before anything else; retry after modules if the device is late.
	n.openTPM(0)
	n.tpmReady()
	n.phase(pcrphase.EnterInitrd)

	n.loadModules()
	if n.tpm == nil {
		n.openTPM(3 * time.Second)
		n.tpmReady()
		n.phase(pcrphase.EnterInitrd)
	}

	if err := sysinit.EFIVarsMount.Do(); err != nil {
		n.fatal("efivarfs", err)
	}

	n.readSecureBoot()
	n.readConfig()

	go n.network()

	if parts, err := n.waitPartitions(ctx); err != nil {
		n.fatal("partitions", err)
	} else {
		n.parts = parts
	}

	n.mountESP()

	// machined's side of the handover: only now may the key unseal
	n.phase(pcrphase.LeaveInitrd)
	n.phase(pcrphase.EnterMachined)
	vol, keys, unlocked := n.unlockState(ctx)
	// whatever happened, make the key unsealable until the next boot
	n.phase(pcrphase.StartTheWorld)

	if unlocked {
		n.afterUnlock(ctx, vol, keys)
		n.startSideroLink(ctx) // node/siderolink.go: before maintenance mode

		if err := n.loadConfig(ctx); err != nil {
			// ctx ended while waiting in maintenance mode
			return err
		}
	}

	apiCheck := n.startAPI(ctx)

	n.settle(ctx, apiCheck)

	return nil
}

func (n *Node) version() string {
	if v := n.cmdline[sysinit.ParamVersion]; v != "" {
		return v
	}

	if b, err := os.ReadFile(VersionFile); err == nil {
		return strings.TrimSpace(string(b))
	}

	return "unknown"
}

func (n *Node) openTPM(wait time.Duration) {
	deadline := time.Now().Add(wait)

	for {
		t, err := linuxtpm.Open(TPMDevice)
		if err == nil {
			n.tpm = t

			return
		}

		if time.Now().After(deadline) {
			n.Log.Info("no TPM", "err", err)

			return
		}

		time.Sleep(100 * time.Millisecond)
	}
}

func (n *Node) tpmReady() {
	if n.tpm == nil {
		n.marker(nodeapi.MarkerTPMReady, "device=none")

		return
	}

	n.marker(nodeapi.MarkerTPMReady, "device="+TPMDevice)
}

func (n *Node) phase(p pcrphase.Phase) {
	if n.tpm == nil {
		return
	}

	n.publish("events", func(rt *api.Runtime) error { rt.Phase(string(p), machine.PhaseEvent_START); return nil })

	if err := pcrphase.Extend(n.tpm, p); err != nil {
		n.fatal("phase", err)

		return
	}

	n.marker(nodeapi.MarkerPhase, string(p))
	n.publish("events", func(rt *api.Runtime) error { rt.Phase(string(p), machine.PhaseEvent_STOP); return nil })
}

func (n *Node) loadModules() {
	data, err := os.ReadFile(sysinit.ModulesList)
	if err != nil {
		n.Log.Info("no module list", "err", err)

		return
	}

	loaded, err := sysinit.LoadModules(sysinit.ParseModules(data), filepath.Join(ModulesDir, sysinit.KernelRelease()))
	if err != nil {
		n.fatal("modules", err)
	}

	n.marker(nodeapi.MarkerModules, fmt.Sprintf("count=%d", len(loaded)))
}

func (n *Node) readSecureBoot() {
	sb, err1 := n.efi.SecureBoot()
	sm, err2 := n.efi.SetupMode()

	if err := errors.Join(err1, err2); err != nil {
		n.fatal("secureboot", err)
	}

	n.sb = state.SecureBoot{Enabled: sb, SetupMode: sm, WantDB: n.cmdline[sysinit.ParamDB]}
	n.sb.DB, n.sb.DBErr = n.efi.DBCertificates()

	n.update(func(s *nodeapi.Status) { s.SecureBoot, s.SetupMode = sb, sm })
	// labos always boots as a signed UKI; Secure Boot counts as on only
	// when enforced (user mode), as Talos reports it
	n.publish("security-state", func(rt *api.Runtime) error { return rt.SetSecurityState(sb && !sm, true) })
	n.marker(nodeapi.MarkerSecureBoot, fmt.Sprintf("enabled=%t setupmode=%t", sb, sm))
}

// readConfig reads the image's embedded bootstrap config. It may carry
// add-on manifests and nothing else labos uses: a machine identity (a
// v1alpha1 document) in an image would be readable from the unencrypted
// ESP, so labos ignores one and says so.
func (n *Node) readConfig() {
	data, err := config.ReadEmbedded("/")
	if errors.Is(err, config.ErrNotEmbedded) {
		n.embedded = &config.Machine{}

		return
	}

	if err != nil {
		n.fatal("config", err)

		return
	}

	m, err := config.Parse(data)
	if err != nil {
		n.fatal("config", err)

		return
	}

	if m.HasV1Alpha1 {
		n.fatal("config", errors.New("the embedded config carries a v1alpha1 document (machine secrets); ignored: the machine config is delivered after boot"))
	}

	n.embedded = &config.Machine{InlineManifests: m.InlineManifests}
}

func (n *Node) network() {
	link, err := sysinit.ConfigureNetwork(sysinit.DefaultAddress, sysinit.DefaultGateway)
	if err != nil {
		n.fatal("network", err)

		return
	}

	n.Log.Info("network up", "link", link)
}

// waitPartitions waits for the ESP to appear: virtio-blk probes
// asynchronously after its module loads.
func (n *Node) waitPartitions(ctx context.Context) ([]sysinit.Partition, error) {
	deadline := time.Now().Add(10 * time.Second)

	for {
		parts, err := sysinit.FindPartitions("/sys")
		if err == nil {
			if esp, err := sysinit.FindPartition(parts, PartESP, ""); err == nil {
				n.disk = esp.Disk

				return parts, nil
			}
		}

		if time.Now().After(deadline) {
			return parts, fmt.Errorf("no %s partition after 10s", PartESP)
		}

		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n *Node) mountESP() {
	p, err := sysinit.FindPartition(n.parts, PartESP, n.disk)
	if err != nil {
		n.fatal("esp", err)

		return
	}

	m := sysinit.Mount{Source: p.Device, Target: ESPMount, FSType: "vfat", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC}
	if err := m.Do(); err != nil {
		n.fatal("esp", err)

		return
	}

	n.mounts = append(n.mounts, ESPMount)
	n.esp = &bootentry.ESP{Root: ESPMount}
	n.marker(nodeapi.MarkerESPMounted, "device="+p.Device)
}

func (n *Node) unlockState(ctx context.Context) (state.Volume, state.Keys, bool) {
	var (
		res  state.Result
		err  error
		vol  state.Volume
		keys state.Keys
	)

	p, perr := sysinit.FindPartition(n.parts, PartState, n.disk)
	if perr != nil {
		err = &state.Error{Reason: state.ReasonNoPartition, Err: perr}
	} else {
		var kerr error

		keys, kerr = state.ReadKeys()

		if kerr != nil && len(keys.PCRPublicKey) == 0 {
			err = kerr
		} else {
			vol = state.Volume{
				Device: p.Device, MapName: StateMapName, MountPoint: StateMount, Crypt: luks.Cryptsetup{},
				SealGate: func() error { return state.CheckSealAllowed(n.sb) },
				Progress: func(step state.Step) { n.marker(string(step), "device="+p.Device) },
			}

			var t transport.TPM
			if n.tpm != nil {
				t = n.tpm
			}

			res, err = vol.Unlock(ctx, t, keys)
		}
	}

	if err != nil {
		reason := state.ReasonOf(err)
		n.update(func(s *nodeapi.Status) { s.UnlockError = err.Error() })

		n.publishVolume(p.Device, err)

		if reason == state.ReasonSecureBootOff || reason == state.ReasonSecureBootMode || reason == state.ReasonDBMissing {
			n.marker(nodeapi.MarkerSealRefused, "reason="+string(reason))
		}

		n.marker(nodeapi.MarkerUnlockFailed, "reason="+string(reason))

		return vol, keys, false
	}

	n.mounts = append(n.mounts, StateMount)
	n.stateMounted = true
	n.publishVolume(p.Device, nil)
	n.update(func(s *nodeapi.Status) { s.TPMUnlocked, s.StateFormatted = true, res.Formatted })

	if res.Formatted {
		n.marker(nodeapi.MarkerStateFormat, "device="+p.Device)
	}

	n.marker(nodeapi.MarkerStateUnlocked, "device="+p.Device)

	return vol, keys, true
}

// afterUnlock records this boot on STATE (proof that earlier data reads
// back) and checks that the TPM now refuses the key: start-the-world has
// moved PCR 11 past the signed value.
func (n *Node) afterUnlock(ctx context.Context, vol state.Volume, keys state.Keys) {
	rec, err := state.RecordBoot(StateMount, n.Status().StateFormatted)
	if err != nil {
		n.fatal("state-record", err)
	}

	refused := false

	if n.tpm != nil {
		_, err := vol.Recover(ctx, n.tpm, keys)
		refused = state.ReasonOf(err) == state.ReasonPCR11

		if err == nil {
			n.fatal("start-the-world", errors.New("the disk key still unseals after start-the-world"))
		}
	}

	n.update(func(s *nodeapi.Status) {
		s.StateToken, s.StateBoots, s.UnsealAfterStartRefused = rec.Token, rec.Boots, refused
	})
}

func (n *Node) startAPI(ctx context.Context) nodeapi.Check {
	c := nodeapi.Check{Name: nodeapi.ServiceAPI}

	if n.machine == nil {
		c.Message = "no machine config: no CA to issue the server certificate"
		if !n.stateMounted {
			c.Message += " (STATE is not available to keep one)"
		}

		return c
	}

	// asked at each handshake: the SideroLink address may come up after
	// the API (node/siderolink.go) and must be in the certificate then
	names := func() ([]net.IP, []string) {
		ips, dns := n.apiNames()

		for _, san := range n.machine.CertSANs {
			if ip := net.ParseIP(san); ip != nil {
				ips = append(ips, ip)
			} else {
				dns = append(dns, san)
			}
		}

		return ips, dns
	}

	tlsCfg, err := api.ReissuingTLSConfig(n.machine.CACert, n.machine.CAKey, names)
	if err != nil {
		c.Message = err.Error()
		n.fatal("api", err)

		return c
	}

	addr := fmt.Sprintf(":%d", nodeapi.APIPort)

	lis, err := net.Listen("tcp", addr)
	if err != nil {
		c.Message = err.Error()
		n.fatal("api", err)

		return c
	}

	if n.rt == nil {
		c.Message = "no runtime to serve"

		return c
	}

	srv := &api.Server{Node: n, Runtime: n.rt, Tag: TalosTag, ImageVersion: n.Status().Version, Host: n.entryName()}

	go func() {
		if err := api.Serve(ctx, lis, srv, tlsCfg); err != nil {
			n.fatal("api", err)
		}
	}()

	n.marker(nodeapi.MarkerAPIUp, "addr="+addr)

	c.Healthy, c.Message = true, "listening on "+addr

	return c
}

// entryName is the image name: the boot entry prefix.
func (n *Node) entryName() string {
	if v := n.cmdline[sysinit.ParamName]; v != "" {
		return v
	}

	if sel, err := n.efi.LoaderEntrySelected(); err == nil {
		if e, err := bootentry.Parse(sel); err == nil {
			if i := strings.LastIndexByte(e.Base, '-'); i > 0 {
				return e.Base[:i]
			}
		}
	}

	return "labos"
}

// addons reports the baked add-ons and, when the image has an IMAGECACHE
// partition, the add-on images its Talos image cache lacks.
func (n *Node) addons() ([]nodeapi.Addon, []string, error) {
	m := n.machine
	if m == nil {
		m = n.embedded
	}

	if m == nil {
		return nil, nil, errors.New("no machine config")
	}

	as, err := addons.FromManifests(m.InlineManifests)
	if err != nil {
		return nil, nil, err
	}

	var uncached []string

	if p, err := sysinit.FindPartition(n.parts, PartCache, n.disk); err == nil {
		refs := addons.Images(as)
		cached := map[string]string{}

		// an image cache that cannot be read holds none of the images
		if err := addons.MountCache(p.Device); err == nil {
			cached = addons.CachedDigests(os.DirFS(addons.CacheMountPoint), refs)
		} else {
			n.Log.Info("image cache not readable", "err", err)
		}

		uncached = addons.Uncached(refs, cached)
		addons.PinImages(as, cached)
	}

	return as, uncached, nil
}

func (n *Node) checks(apiCheck nodeapi.Check) []nodeapi.Check {
	st := n.Status()

	tpmCheck := nodeapi.Check{Name: nodeapi.ServiceTPMUnlock, Healthy: st.TPMUnlocked, Message: st.UnlockError}
	if st.TPMUnlocked {
		tpmCheck.Message = "STATE key unsealed with the signed PCR 11 policy"
	}

	stateCheck := nodeapi.Check{Name: nodeapi.ServiceState}

	var sfs unix.Statfs_t
	switch err := unix.Statfs(StateMount, &sfs); {
	case err != nil || sfs.Type != unix.EXT4_SUPER_MAGIC || !st.TPMUnlocked:
		stateCheck.Message = StateMount + " is not the STATE volume"
	case st.StateBoots == 0:
		stateCheck.Message = "STATE is mounted but its boot record could not be read or written"
	default:
		stateCheck.Healthy = true
		stateCheck.Message = fmt.Sprintf("ext4 on /dev/mapper/%s at %s, boot %d", StateMapName, StateMount, st.StateBoots)
	}

	// the eBPF probes (bpf syscalls) and the add-on check (mounting and
	// reading the image cache) are independent: run them side by side so
	// one's disk waits overlap the other's work
	ebpfDone := make(chan nodeapi.Check, 1)

	go func() { ebpfDone <- health.RunProbes(nodeapi.ServiceEBPF, health.CiliumProbes()) }()

	as, uncached, err := n.addons()
	addonCheck := health.Addons(as, nil)

	if err != nil {
		addonCheck.Message = err.Error()
	}

	// Talos would pull what its image cache lacks; a baked image must not
	// need to.
	if len(uncached) > 0 {
		addonCheck.Healthy = false
		addonCheck.Message = "not in the image cache: " + strings.Join(uncached, ", ")
	}

	n.update(func(s *nodeapi.Status) { s.Addons = as })

	return []nodeapi.Check{tpmCheck, stateCheck, apiCheck, <-ebpfDone, addonCheck}
}

func (n *Node) settle(_ context.Context, apiCheck nodeapi.Check) {
	checks, healthy, reason := health.Evaluate(n.checks(apiCheck), n.cmdline[sysinit.ParamInject])

	selected, _ := n.efi.LoaderEntrySelected()
	countPath, _ := n.efi.LoaderBootCountPath()

	n.update(func(s *nodeapi.Status) {
		s.Checks, s.Healthy, s.BootEntry = checks, healthy, selected
	})

	if healthy {
		n.marker(nodeapi.MarkerHealthy, "")
	} else {
		n.marker(nodeapi.MarkerUnhealthy, "reason="+reason)
	}

	var out Outcome

	if n.esp == nil {
		n.fatal("bless", errors.New("ESP not mounted"))
	} else {
		var err error

		out, err = SettleWith(*n.esp, countPath, selected, healthy, n.checkpoint)
		if err != nil {
			n.fatal("bless", err)
		}

		if failed, err := n.esp.Failed(); err == nil {
			n.update(func(s *nodeapi.Status) { s.FailedUpgrades = failed })
		}

		n.update(func(s *nodeapi.Status) {
			s.Blessed = out.Blessed
			if out.Entry != "" {
				s.BootEntry = out.Entry
			}
		})

		if out.Blessed && healthy {
			n.marker(nodeapi.MarkerBlessed, "entry="+out.Entry)
		}
	}

	st := n.Status()
	n.publishSettled(st.Checks, st.BootEntry)
	n.writeStatus()

	if out.Reboot {
		n.Log.Info("entry marked bad", "file", out.MarkedBad)
		n.schedule(action{}, 0)
	}
}

func (n *Node) writeStatus() {
	st := n.Status()

	b, err := json.Marshal(st)
	if err != nil {
		n.fatal("status", err)

		return
	}

	// the console line is for the lab harness watching the boot; clients
	// read the node's state through the Talos API
	n.marker(nodeapi.MarkerStatus, string(b))
}

// checkpoint announces a power-cut test point and, in images built with
// labos.pause=DURATION on their (signed) command line, waits there so the
// test can cut power at exactly this point.
func (n *Node) checkpoint(point string) {
	n.marker(nodeapi.MarkerCheckpoint, "point="+point)

	if d, err := time.ParseDuration(n.cmdline[sysinit.ParamPause]); err == nil && d > 0 && d <= time.Minute {
		time.Sleep(d)
	}
}

func (n *Node) schedule(a action, delay time.Duration) {
	n.pending.Store(true)

	// the first request wins; the API reply goes out before it happens
	n.once.Do(func() {
		go func() {
			time.Sleep(delay)
			n.actions <- a
		}()
	})
}

// Rollback implements api.Node.
func (n *Node) Rollback(context.Context) (string, error) {
	done, err := n.begin()
	if err != nil {
		return "", err
	}
	defer done()

	if n.esp == nil {
		return "", errors.New("ESP not mounted")
	}

	booted := n.Status().BootEntry
	if e, err := bootentry.Parse(booted); err == nil {
		booted = e.ID()
	}

	prev, err := n.esp.Rollback(booted)
	if err != nil {
		return "", err
	}

	if err := n.esp.SetDefault(prev.ID()); err != nil {
		return "", err
	}

	n.schedule(action{}, time.Second)

	return prev.ID(), nil
}

// Reboot implements api.Node.
func (n *Node) Reboot(_ context.Context, powerOff bool) error {
	n.schedule(action{powerOff: powerOff}, time.Second)

	return nil
}

// Wait blocks until a reboot or power off is requested, then performs it.
// It returns only if the reboot syscall fails.
func (n *Node) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case a := <-n.actions:
		if a.powerOff {
			n.marker(nodeapi.MarkerPoweroff, "")
		} else {
			n.marker(nodeapi.MarkerRebooting, "")
		}

		if n.tpm != nil {
			_ = n.tpm.Close()
		}

		unix.Sync()

		for i := len(n.mounts) - 1; i >= 0; i-- {
			if err := unix.Unmount(n.mounts[i], 0); err != nil {
				n.Log.Info("unmount failed", "target", n.mounts[i], "err", err)
			}
		}

		if n.Status().TPMUnlocked {
			// close the mapping only after its filesystem is unmounted
			_ = luks.Cryptsetup{}.Close(context.Background(), StateMapName)
		}

		return sysinit.Shutdown(a.powerOff, nil)
	}
}

// ensure Node satisfies the API's needs
var _ api.Node = (*Node)(nil)
