package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"

	"github.com/labfleet/labfleet/lab/labos/api"
	"github.com/labfleet/labfleet/lab/labos/config"
	"github.com/labfleet/labfleet/lab/labos/upgrade"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// pulledImages are the installer images ImageService.Pull brought to the
// node, kept in memory until the next boot (Talos keeps them in
// containerd's store; a lab node installs at most a few per boot).
type pulledImages struct {
	mu     sync.Mutex
	images map[string]pulled
}

type pulled struct {
	img  *upgrade.Image
	info api.Image
}

// publish runs f on the node's Talos runtime (resources and events) if
// there is one; a publishing error is reported as a marker, never fatal.
func (n *Node) publish(step string, f func(rt *api.Runtime) error) {
	if n.rt == nil {
		return
	}

	if err := f(n.rt); err != nil {
		n.fatal(step, err)
	}
}

// publishVolume publishes STATE's volume status as Talos's VolumeManager
// would: ready once unlocked and mounted, failed with the reason otherwise.
func (n *Node) publishVolume(device string, unlockErr error) {
	spec := block.VolumeStatusSpec{
		Type:               block.VolumeTypePartition,
		Location:           device,
		EncryptionProvider: block.EncryptionProviderLUKS2,
		Filesystem:         block.FilesystemTypeEXT4,
		MountLocation:      StateMount,
		Phase:              block.VolumePhaseReady,
	}

	if unlockErr != nil {
		spec.Phase, spec.ErrorMessage = block.VolumePhaseFailed, unlockErr.Error()
	}

	n.publish("volume-status", func(rt *api.Runtime) error { return rt.SetVolume(PartState, spec) })
}

// publishSettled publishes the outcome of the boot: each check as a
// service state event, the booted entry and the machine status (running;
// ready only when healthy, with each failing check as an unmet condition).
func (n *Node) publishSettled(checks []nodeapi.Check, entry string) {
	var unmet []runtime.UnmetCondition

	for _, c := range checks {
		action := machine.ServiceStateEvent_RUNNING
		if !c.Healthy {
			action = machine.ServiceStateEvent_FAILED
			unmet = append(unmet, runtime.UnmetCondition{Name: c.Name, Reason: c.Message})
		}

		n.publish("events", func(rt *api.Runtime) error {
			rt.Service(c.Name, action, c.Message, c.Healthy)

			return nil
		})
	}

	n.publish("booted-entry", func(rt *api.Runtime) error { return rt.SetBootedEntry(entry) })
	n.publish("events", func(rt *api.Runtime) error {
		rt.Sequence("boot", machine.SequenceEvent_STOP)

		return nil
	})
	n.publish("machine-status", func(rt *api.Runtime) error {
		return rt.SetMachineStatus(runtime.MachineStageRunning, unmet)
	})
}

// imageSource is where images come from: the lab registry over plain HTTP
// and the registry mirrors of the stored machine config (read at each
// pull: a node reached through the hub may have no other way out).
func (n *Node) imageSource() (upgrade.Source, error) {
	src := upgrade.Source{Insecure: []string{nodeapi.GuestRegistryAddr}}

	data, err := config.ReadStored(StateMount)
	if errors.Is(err, config.ErrNotStored) {
		return src, nil
	}

	if err != nil {
		return src, err
	}

	if src.Mirrors, err = config.Mirrors(data); err != nil {
		return src, fmt.Errorf("registry mirrors: %w", err)
	}

	return src, nil
}

// Pull implements api.Node: it fetches and checks an installer image and
// keeps it for Install.
func (n *Node) Pull(ctx context.Context, ref string) (api.Image, error) {
	src, err := n.imageSource()
	if err != nil {
		return api.Image{}, err
	}

	img, err := upgrade.Pull(ctx, ref, src)
	if err != nil {
		return api.Image{}, err
	}

	info := api.Image{Name: ref, Digest: img.Digest, Size: int64(len(img.UKI)), Created: time.Now()}

	n.pulled.mu.Lock()
	defer n.pulled.mu.Unlock()

	if n.pulled.images == nil {
		n.pulled.images = map[string]pulled{}
	}

	n.pulled.images[ref] = pulled{img: img, info: info}

	return info, nil
}

// Images implements api.Node.
func (n *Node) Images() []api.Image {
	n.pulled.mu.Lock()
	defer n.pulled.mu.Unlock()

	out := make([]api.Image, 0, len(n.pulled.images))
	for _, p := range n.pulled.images {
		out = append(out, p.info)
	}

	slices.SortFunc(out, func(a, b api.Image) int { return strings.Compare(a.Name, b.Name) })

	return out
}

// ErrNotPulled answers an install of an image that was not pulled first.
var ErrNotPulled = errors.New("was not pulled; pull it first (talosctl image pull, ImageService.Pull)")

// Install implements api.Node: it writes the UKI of a pulled image as the
// next boot entry without rebooting.
func (n *Node) Install(_ context.Context, ref string) (string, error) {
	done, err := n.begin()
	if err != nil {
		return "", err
	}
	defer done()

	n.pulled.mu.Lock()
	p, ok := n.pulled.images[ref]
	n.pulled.mu.Unlock()

	if !ok {
		return "", fmt.Errorf("image %s %w", ref, ErrNotPulled)
	}

	file, err := n.install(p.img)
	if err != nil {
		return "", err
	}

	return fmt.Sprintf("installed %s from %s@%s; reboot to boot it", file, ref, p.img.Digest), nil
}

// Upgrade implements api.Node: the legacy upgrade pulls, installs and
// reboots in one call.
func (n *Node) Upgrade(ctx context.Context, ref string) (string, error) {
	done, err := n.begin()
	if err != nil {
		return "", err
	}
	defer done()

	// nothing to install to: say so before fetching anything
	if n.esp == nil {
		return "", errors.New("ESP not mounted")
	}

	src, err := n.imageSource()
	if err != nil {
		return "", err
	}

	img, err := upgrade.Pull(ctx, ref, src)
	if err != nil {
		return "", err
	}

	file, err := n.install(img)
	if err != nil {
		return "", err
	}

	n.schedule(action{}, time.Second)

	return fmt.Sprintf("installed %s from %s@%s; rebooting", file, ref, img.Digest), nil
}

// install verifies img against the enrolled keys and writes it to the ESP;
// the caller holds the operation lock.
func (n *Node) install(img *upgrade.Image) (string, error) {
	if n.esp == nil {
		return "", errors.New("ESP not mounted")
	}

	certs, err := n.efi.DBCertificates()
	if err != nil {
		return "", fmt.Errorf("reading db certificates: %w", err)
	}

	dbx, err := n.efi.DBX()
	if err != nil {
		return "", fmt.Errorf("reading dbx: %w", err)
	}

	e, err := upgrade.InstallImage(*n.esp, img, upgrade.Options{
		Trust:  upgrade.Trust{DB: certs, DBX: dbx},
		Booted: n.Status().BootEntry,
		OnWrite: func(file string) {
			n.marker(MarkerUpgradeWriting, "entry="+file)
			n.checkpoint("before-write")
		},
		Checkpoint: n.checkpoint,
	})
	if err != nil {
		return "", err
	}

	return e.File, nil
}
