// Package talos drives nodes through the Talos machine API with machinery's
// client and mTLS credentials from a talosconfig. It works against real Talos
// nodes, labos nodes and the simulator's API server alike, and uses only
// calls a Talos v1.14 node serves (Version, Upgrade, Rollback, ServiceList,
// and the COSI State Get of the ImageFactorySchematic and BootID resources).
//
// It implements driver.FallbackReporter from what a Talos node does publish,
// its boot ID (COSI BootID): a node that rebooted after this handle asked
// it to upgrade and came back on another version did not come up on the
// target, so the health gate need not wait out its timeout.
package talos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/inventory"
)

// Factory opens machine API clients; talosconfig files are read once and cached.
type Factory struct {
	mu      sync.Mutex
	configs map[string]*clientconfig.Config
	resolve MachineResolver
}

// MachineResolver gives the host:port at which a hub-enrolled machine's API
// is reached (its SideroLink tunnel address; fleetctl's hub registry).
type MachineResolver func(ctx context.Context, uuid string) (string, error)

// Option configures a Factory.
type Option func(*Factory)

// WithMachineResolver lets the factory open nodes that the inventory names
// by machine UUID (inventory.Node.Machine) instead of an endpoint.
func WithMachineResolver(r MachineResolver) Option {
	return func(f *Factory) { f.resolve = r }
}

// NewFactory returns a Factory.
func NewFactory(opts ...Option) *Factory {
	f := &Factory{configs: map[string]*clientconfig.Config{}}
	for _, o := range opts {
		o(f)
	}

	return f
}

// endpoint resolves a node named by machine UUID at the moment it is
// opened: the tunnel address is the hub's to assign and may change if the
// machine enrolls again, so it is never stored in the rollout.
func (f *Factory) endpoint(ctx context.Context, t driver.Target) (string, error) {
	uuid, byMachine := strings.CutPrefix(t.Endpoint, inventory.MachinePrefix)
	if !byMachine {
		return t.Endpoint, nil
	}

	if f.resolve == nil {
		return "", fmt.Errorf("node %s/%s is named by machine UUID %s but no hub registry is open (run the rollout with the hub's --db)", t.Cluster, t.Node, uuid)
	}

	ep, err := f.resolve(ctx, uuid)
	if err != nil {
		return "", fmt.Errorf("node %s/%s: resolving machine %s through the hub: %w", t.Cluster, t.Node, uuid, err)
	}

	return ep, nil
}

func (f *Factory) config(path string) (*clientconfig.Config, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	if c, ok := f.configs[path]; ok {
		return c, nil
	}

	c, err := clientconfig.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading talosconfig %s: %w", path, err)
	}

	if c.Context == "" || c.Contexts[c.Context] == nil {
		return nil, fmt.Errorf("talosconfig %s has no current context", path)
	}

	f.configs[path] = c

	return c, nil
}

// Open connects to the node's endpoint with the cluster's credentials.
// The connection is lazy: errors reaching the node surface on the first call.
func (f *Factory) Open(ctx context.Context, t driver.Target) (driver.Node, error) {
	if t.Talosconfig == "" {
		return nil, fmt.Errorf("cluster %q has no talosconfig in the inventory", t.Cluster)
	}

	cfg, err := f.config(t.Talosconfig)
	if err != nil {
		return nil, err
	}

	ep, err := f.endpoint(ctx, t)
	if err != nil {
		return nil, err
	}

	c, err := client.New(ctx, client.WithConfig(cfg), client.WithEndpoints(ep),
		// A node that reboots into its new image drops the connection; with
		// gRPC's default backoff (up to 120s) the health gate would notice
		// the node back far later than it is.
		client.WithGRPCDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", ep, err)
	}

	return &node{c: c, preserve: t.Preserve()}, nil
}

type node struct {
	c        *client.Client
	preserve bool
	// noCOSI: the node serves no COSI State (Unimplemented), so Image and
	// bootID stop asking it.
	noCOSI atomic.Bool

	mu sync.Mutex
	// bootBefore is the node's boot ID read just before this handle asked
	// it to upgrade ("": not asked, or the node published none).
	bootBefore string
}

// Version is the image version the node runs: ImageVersion of its
// Version reply.
func (n *node) Version(ctx context.Context) (string, error) {
	resp, err := n.c.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("querying version: %w", err)
	}

	for _, m := range resp.GetMessages() {
		if v := ImageVersion(m.GetVersion()); v != "" {
			return v, nil
		}
	}

	return "", errors.New("querying version: node reported no version tag")
}

// Image implements driver.ImageReporter. Talos reports no digest of the
// installer image it booted, so the image is identified as the engine's
// driver.Want allows for that case: by its version (Version, as the
// Version method reads it) and the image-factory schematic ID the node
// publishes as the COSI resource ImageFactorySchematic (`talosctl get
// imagefactoryschematics`; Talos 1.14 fills it for factory images). A node
// without that resource (a stock installer, labos) or without the COSI
// State service reports no schematic: the engine then judges it by version
// and refuses it only when the plan names a schematic it cannot confirm.
func (n *node) Image(ctx context.Context) (driver.ImageID, error) {
	v, err := n.Version(ctx)
	if err != nil {
		return driver.ImageID{}, err
	}

	id := driver.ImageID{Version: v}

	if n.noCOSI.Load() {
		return id, nil
	}

	r, err := safe.StateGetByID[*runtime.ImageFactorySchematic](ctx, n.c.COSI, runtime.ImageFactorySchematicID)

	switch {
	case err == nil:
		id.Schematic = r.TypedSpec().SchematicID
	case state.IsNotFoundError(err), status.Code(err) == codes.NotFound:
		// No factory schematic on this image (it may come with the next one).
	case status.Code(err) == codes.Unimplemented:
		n.noCOSI.Store(true) // no COSI State at all: do not ask again
	default:
		return driver.ImageID{}, fmt.Errorf("reading the image-factory schematic: %w", err)
	}

	return id, nil
}

// ImageVersion is the version of the image a node runs. A labos node (and
// a Talos node running a labfleet image) reports the Talos release as Tag
// and the image's own version in Sha, where a stock Talos build reports
// the git revision it was built from; for a stock build (Sha empty or a
// git revision) the image version is the Talos release, Tag.
func ImageVersion(v *machineapi.VersionInfo) string {
	if sha := v.GetSha(); sha != "" && !gitRevision.MatchString(sha) {
		return sha
	}

	return v.GetTag()
}

// gitRevision matches what Talos's build puts in Sha: an abbreviated or
// full commit hash, possibly marked dirty.
var gitRevision = regexp.MustCompile(`^[0-9a-f]{7,40}(-dirty)?$`)

func (n *node) Upgrade(ctx context.Context, image string) error {
	n.noteBoot(ctx)

	resp, err := n.c.MachineClient.Upgrade(ctx, &machineapi.UpgradeRequest{Image: image, Preserve: n.preserve})
	if err == nil {
		_, err = client.FilterMessages(resp, err)
	}

	if err != nil {
		if inProgress(err) {
			return driver.ErrInProgress
		}

		return fmt.Errorf("requesting upgrade: %w", err)
	}

	return nil
}

// inProgress recognises "already upgrading" by its message: the simulator
// and labos answer "upgrade in progress", Talos reports its sequence lock as
// "locked". The status code alone says too little: labos answers
// FailedPrecondition for every refused upgrade (a bad image too).
func inProgress(err error) bool {
	msg := strings.ToLower(err.Error())
	if s, ok := status.FromError(err); ok {
		msg = strings.ToLower(s.Message())
	}

	return strings.Contains(msg, "in progress") || lockedWord.MatchString(msg)
}

// lockedWord matches "locked" but not "unlocked".
var lockedWord = regexp.MustCompile(`\blocked\b`)

func (n *node) Rollback(ctx context.Context) error {
	// the rollback reboots the node onto its previous image: that must not
	// read as a fallback from the upgrade noted before it
	n.setBootBefore("")

	if err := n.c.Rollback(ctx); err != nil {
		return fmt.Errorf("requesting rollback: %w", err)
	}

	return nil
}

func (n *node) Health(ctx context.Context) (driver.Health, error) {
	resp, err := n.c.ServiceList(ctx)
	if err != nil {
		return driver.Health{}, fmt.Errorf("listing services: %w", err)
	}

	var h driver.Health

	for _, m := range resp.GetMessages() {
		for _, s := range m.GetServices() {
			h.Services = append(h.Services, driver.Service{
				ID:      s.GetId(),
				State:   s.GetState(),
				Healthy: s.GetHealth().GetHealthy(),
				Message: s.GetHealth().GetLastMessage(),
				// Talos marks a service without a health check "unknown".
				NoHealthCheck: s.GetHealth().GetUnknown(),
			})
		}
	}

	return h, nil
}

func (n *node) Close() error { return n.c.Close() }

// errNoBootBefore: FellBackFrom has nothing to compare with.
var errNoBootBefore = errors.New("no boot ID from before an upgrade request of this handle: cannot tell whether the node rebooted")

// FellBackFrom implements driver.FallbackReporter. The node fell back from
// version when it rebooted after this handle's upgrade request (its boot ID
// changed) and now runs another version: it booted the image it ran before,
// because its firmware or Talos went back to it, or the install failed and
// Talos rebooted. Only a request of this handle counts: a handle opened
// after a restart of fleetctl, or a node that publishes no boot ID (Talos
// before BootID), cannot tell and gets an error, which the engine reads as
// "no".
func (n *node) FellBackFrom(ctx context.Context, version string) (bool, error) {
	n.mu.Lock()
	before := n.bootBefore
	n.mu.Unlock()

	if before == "" {
		return false, errNoBootBefore
	}

	now, err := n.bootID(ctx)
	if err != nil {
		return false, err
	}

	if now == before {
		return false, nil // not rebooted yet: the upgrade may still be installing
	}

	// read after the boot ID, so it is this boot's version (or a later one)
	v, err := n.Version(ctx)
	if err != nil {
		return false, err
	}

	return v != version, nil
}

// noteBoot keeps the boot ID from just before an upgrade request; without
// one, FellBackFrom cannot tell, which only costs the gate its timeout.
func (n *node) noteBoot(ctx context.Context) {
	id, err := n.bootID(ctx)
	if err != nil {
		id = ""
	}

	n.setBootBefore(id)
}

func (n *node) setBootBefore(id string) {
	n.mu.Lock()
	n.bootBefore = id
	n.mu.Unlock()
}

// bootID reads the node's boot ID (Talos's BootIDController publishes
// /proc/sys/kernel/random/boot_id as the COSI resource BootID).
func (n *node) bootID(ctx context.Context) (string, error) {
	if n.noCOSI.Load() {
		return "", errors.New("reading the boot ID: the node serves no COSI State")
	}

	r, err := safe.StateGetByID[*runtime.BootID](ctx, n.c.COSI, runtime.BootIDID)
	if err != nil {
		if status.Code(err) == codes.Unimplemented {
			n.noCOSI.Store(true)
		}

		return "", fmt.Errorf("reading the boot ID: %w", err)
	}

	if r.TypedSpec().BootID == "" {
		return "", errors.New("reading the boot ID: the node published an empty one")
	}

	return r.TypedSpec().BootID, nil
}

// systemContainerd is where talosctl upgrade (v1.14, its default
// --namespace system) pulls the installer and where the install reads it.
var systemContainerd = &common.ContainerdInstance{Driver: common.ContainerDriver_CRI, Namespace: common.ContainerdNamespace_NS_SYSTEM}

// Stage implements driver.Stager with ImageService.Pull, as `talosctl
// image pull` does: the node fetches and checks the image into its image
// store (labos: its pulled-image store) without touching its boot entries.
func (n *node) Stage(ctx context.Context, image string) error {
	pull, err := n.c.ImageClient.Pull(ctx, &machineapi.ImageServicePullRequest{Containerd: systemContainerd, ImageRef: image})
	if err != nil {
		return fmt.Errorf("pulling %s: %w", image, err)
	}

	for {
		if _, err := pull.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}

			return fmt.Errorf("pulling %s: %w", image, err)
		}
	}
}

// Switch implements driver.Stager as talosctl upgrades a 1.13+ node:
// LifecycleService.Upgrade with the pulled image (progress messages and an
// exit code; the node does not pull), then Reboot.
func (n *node) Switch(ctx context.Context, image string) error {
	n.noteBoot(ctx)

	up, err := n.c.LifecycleClient.Upgrade(ctx, &machineapi.LifecycleServiceUpgradeRequest{
		Containerd: systemContainerd,
		Source:     &machineapi.InstallArtifactsSource{ImageName: image},
	})
	if err != nil {
		if inProgress(err) {
			return driver.ErrInProgress
		}

		return fmt.Errorf("installing %s: %w", image, err)
	}

	var (
		msgs []string
		exit int32 = -1
	)

	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			if inProgress(err) {
				return driver.ErrInProgress
			}

			return fmt.Errorf("installing %s: %w", image, err)
		}

		switch p := resp.GetProgress().GetResponse().(type) {
		case *machineapi.LifecycleServiceInstallProgress_Message:
			msgs = append(msgs, p.Message)
		case *machineapi.LifecycleServiceInstallProgress_ExitCode:
			exit = p.ExitCode
		}
	}

	if exit != 0 {
		detail := strings.Join(msgs, "; ")
		if strings.Contains(detail, "was not pulled") {
			return fmt.Errorf("installing %s: %w (%s)", image, driver.ErrNotStaged, detail)
		}

		return fmt.Errorf("installing %s: exit code %d: %s", image, exit, detail)
	}

	if err := n.c.Reboot(ctx); err != nil {
		return fmt.Errorf("rebooting into %s: %w", image, err)
	}

	return nil
}
