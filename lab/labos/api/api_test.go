package api_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blang/semver/v4"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	"github.com/labfleet/labfleet/lab/labos/api"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

type fakeNode struct {
	mu        sync.Mutex
	pulled    map[string]api.Image
	pulls     []string
	installed []string
	upgraded  []string
	rollback  int
	reboots   chan bool
}

func (n *fakeNode) Status() nodeapi.Status {
	return nodeapi.Status{Version: "1.0.0", Checks: []nodeapi.Check{
		{Name: nodeapi.ServiceTPMUnlock, Healthy: true, Message: "unsealed"},
		{Name: nodeapi.ServiceEBPF, Healthy: false, Message: "missing: map/RingBuf"},
	}}
}

func (n *fakeNode) Pull(_ context.Context, ref string) (api.Image, error) {
	n.mu.Lock()
	defer n.mu.Unlock()

	n.pulls = append(n.pulls, ref)

	if strings.Contains(ref, "missing") {
		return api.Image{}, errors.New("manifest unknown")
	}

	img := api.Image{Name: ref, Digest: "sha256:1111", Size: 42, Created: time.Unix(1700000000, 0)}
	n.pulled[ref] = img

	return img, nil
}

func (n *fakeNode) Images() []api.Image {
	n.mu.Lock()
	defer n.mu.Unlock()

	var out []api.Image
	for _, img := range n.pulled {
		out = append(out, img)
	}

	return out
}

func (n *fakeNode) Install(_ context.Context, ref string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()

	if _, ok := n.pulled[ref]; !ok {
		return "", errors.New("image " + ref + " was not pulled; pull it first (ImageService.Pull)")
	}

	n.installed = append(n.installed, ref)

	return "installed lab-1.1.0.efi", nil
}

func (n *fakeNode) Upgrade(_ context.Context, image string) (string, error) {
	n.mu.Lock()
	n.upgraded = append(n.upgraded, image)
	n.mu.Unlock()

	n.reboots <- false

	return "installed lab-1.1.0+3.efi, rebooting", nil
}

func (n *fakeNode) Rollback(context.Context) (string, error) {
	n.mu.Lock()
	n.rollback++
	n.mu.Unlock()

	n.reboots <- false

	return "lab-1.0.0.efi", nil
}

func (n *fakeNode) Reboot(_ context.Context, off bool) error {
	n.reboots <- off

	return nil
}

// env is one lab node's API on a fixed address; reboot() takes it down and
// brings it back with a new boot ID and a new event stream, as a node that
// really rebooted.
type env struct {
	addr   string
	bundle *secrets.Bundle
	tlsCfg func() error
	node   *fakeNode
	dir    string

	mu     sync.Mutex
	boots  int
	rt     *api.Runtime
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T) *env {
	t.Helper()

	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	require.NoError(t, err)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)

	e := &env{addr: lis.Addr().String(), bundle: bundle, dir: t.TempDir(),
		node: &fakeNode{pulled: map[string]api.Image{}, reboots: make(chan bool, 4)}}

	require.NoError(t, e.boot(lis))

	t.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()

		if e.cancel != nil {
			e.cancel()
			require.NoError(t, <-e.done)
		}
	})

	return e
}

// boot publishes what labos publishes while it boots and serves the API.
func (e *env) boot(lis net.Listener) error {
	tlsCfg, err := api.TLSConfig(e.bundle.Certs.OS.Crt, e.bundle.Certs.OS.Key, []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"})
	if err != nil {
		return err
	}

	rt, err := api.NewRuntime()
	if err != nil {
		return err
	}

	e.boots++

	bootID := filepath.Join(e.dir, "boot_id")
	if err := os.WriteFile(bootID, []byte(strings.Repeat(string(rune('a'+e.boots)), 8)+"\n"), 0o644); err != nil {
		return err
	}

	_ = rt.SetBootID(strings.Repeat(string(rune('a'+e.boots)), 8))

	rt.Sequence("boot", machine.SequenceEvent_START)
	_ = rt.SetMachineStatus(runtime.MachineStageBooting, []runtime.UnmetCondition{{Name: "state", Reason: "unlocking"}})
	_ = rt.SetVersion(api.TalosTag)
	_ = rt.SetSecurityState(true, true)
	_ = rt.SetBootedEntry("lab-1.0.0.efi")
	_ = rt.SetVolume("STATE", block.VolumeStatusSpec{Phase: block.VolumePhaseReady, Type: block.VolumeTypePartition,
		EncryptionProvider: block.EncryptionProviderLUKS2, Filesystem: block.FilesystemTypeEXT4, MountLocation: "/var"})
	rt.Service(nodeapi.ServiceAPI, machine.ServiceStateEvent_RUNNING, "listening", true)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := &api.Server{Node: e.node, Runtime: rt, Tag: api.TalosTag, ImageVersion: "1.0.0", Host: "lab", BootIDFile: bootID}

	go func() { done <- api.Serve(ctx, lis, srv, tlsCfg) }()

	rt.Sequence("boot", machine.SequenceEvent_STOP)
	_ = rt.SetMachineStatus(runtime.MachineStageRunning, nil)

	e.rt, e.cancel, e.done = rt, cancel, done

	return nil
}

// reboot stops the API (connections drop, as when the node goes down),
// waits a moment and boots again on the same address.
func (e *env) reboot(t *testing.T) {
	e.mu.Lock()
	defer e.mu.Unlock()

	e.cancel()
	require.NoError(t, <-e.done)

	time.Sleep(200 * time.Millisecond)

	lis, err := net.Listen("tcp", e.addr)
	require.NoError(t, err)
	require.NoError(t, e.boot(lis))
}

// rebootOnRequest reboots the env whenever the node is asked to.
func (e *env) rebootOnRequest(t *testing.T) {
	go func() {
		for range e.node.reboots {
			time.Sleep(300 * time.Millisecond) // the reply goes out first
			e.reboot(t)
		}
	}()
}

func (e *env) client(t *testing.T, bundle *secrets.Bundle, roles ...role.Role) *client.Client {
	t.Helper()

	crt, err := bundle.GenerateTalosAPIClientCertificate(role.MakeSet(roles...))
	require.NoError(t, err)

	cfg := clientconfig.NewConfig("lab", []string{e.addr}, bundle.Certs.OS.Crt, crt)

	c, err := client.New(context.Background(), client.WithConfig(cfg),
		// talosctl's dial options while it tracks an action (action.GRPCDialOptions):
		// no reconnect backoff, so the node is seen back at once
		client.WithGRPCDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{}, MinConnectTimeout: 20 * time.Second,
		})))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() }) //nolint:errcheck

	return c
}

// talosUpgradeAPIRange is the range talosctl v1.14.1's upgrade command
// checks the node's Version tag against to take the ImageService +
// LifecycleService path (cmd/talosctl/cmd/talos/upgrade.go).
var talosUpgradeAPIRange = semver.MustParseRange(">1.13.0-alpha.2 <2.0.0")

func TestVersionSelectsTalosUpgradeAPI(t *testing.T) {
	e := start(t)
	c := e.client(t, e.bundle, role.Reader)

	v, err := c.Version(t.Context())
	require.NoError(t, err)

	info := v.GetMessages()[0].GetVersion()
	require.Equal(t, "v1.14.1", info.GetTag())
	require.Equal(t, "1.0.0", info.GetSha(), "the image's own version travels in Sha")

	tag, err := semver.ParseTolerant(info.GetTag())
	require.NoError(t, err)
	require.True(t, talosUpgradeAPIRange(tag), "talosctl must take the 1.13+ upgrade API for %s", tag)
}

func TestCOSIGetAsTalosctl(t *testing.T) {
	e := start(t)
	c := e.client(t, e.bundle, role.Reader)
	ctx := t.Context()

	// talosctl get <type>: resolve the type through the meta namespace, then Get/List
	for _, tc := range []struct{ name, id string }{
		{"securitystate", runtime.SecurityStateID},
		{"volumestatus", "STATE"},
		{"machinestatus", runtime.MachineStatusID},
		{"version", "version"},
		{"bootedentry", runtime.BootedEntryID},
		{"bootid", runtime.BootIDID},
	} {
		ns := resource.Namespace("")
		rd, err := c.ResolveResourceKind(ctx, &ns, tc.name)
		require.NoError(t, err, tc.name)

		// as get.go: without protobuf unmarshaling, printed from the YAML spec
		r, err := c.COSI.Get(ctx, resource.NewMetadata(ns, rd.TypedSpec().Type, tc.id, resource.VersionUndefined),
			state.WithGetUnmarshalOptions(state.WithSkipProtobufUnmarshal()))
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.id, r.Metadata().ID())

		y, err := yaml.Marshal(r.Spec())
		require.NoError(t, err, tc.name)
		require.NotEqual(t, "{}\n", string(y), "%s: the spec prints", tc.name)

		list, err := c.COSI.List(ctx, resource.NewMetadata(ns, rd.TypedSpec().Type, "", resource.VersionUndefined),
			state.WithListUnmarshalOptions(state.WithSkipProtobufUnmarshal()))
		require.NoError(t, err, tc.name)
		require.Len(t, list.Items, 1, tc.name)
	}

	ss, err := safe.StateGetByID[*runtime.SecurityState](ctx, c.COSI, runtime.SecurityStateID)
	require.NoError(t, err)
	require.True(t, ss.TypedSpec().SecureBoot)

	vs, err := safe.StateGetByID[*block.VolumeStatus](ctx, c.COSI, "STATE")
	require.NoError(t, err)
	require.Equal(t, block.VolumePhaseReady, vs.TypedSpec().Phase)
	require.Equal(t, block.EncryptionProviderLUKS2, vs.TypedSpec().EncryptionProvider)

	ms, err := safe.StateGetByID[*runtime.MachineStatus](ctx, c.COSI, runtime.MachineStatusID)
	require.NoError(t, err)
	require.Equal(t, runtime.MachineStageRunning, ms.TypedSpec().Stage)
	require.True(t, ms.TypedSpec().Status.Ready)

	ver, err := safe.StateGetByID[*runtime.Version](ctx, c.COSI, "version")
	require.NoError(t, err)
	require.Equal(t, "v1.14.1", ver.TypedSpec().Version)

	// the boot ID fleetctl's Talos driver compares across an upgrade
	bid, err := safe.StateGetByID[*runtime.BootID](ctx, c.COSI, runtime.BootIDID)
	require.NoError(t, err)
	require.Regexp(t, `^[a-z]{8}$`, bid.TypedSpec().BootID, "the boot ID the node published at its start")

	// talosctl get -w machinestatus: a watch sees the current state first
	ch := make(chan safe.WrappedStateEvent[*runtime.MachineStatus], 1)
	require.NoError(t, safe.StateWatch(ctx, c.COSI, runtime.NewMachineStatus().Metadata(), ch))
	ev := <-ch
	got, err := ev.Resource()
	require.NoError(t, err)
	require.Equal(t, runtime.MachineStageRunning, got.TypedSpec().Stage)

	// an unknown type is refused the way Talos refuses it
	ns := resource.Namespace("")
	_, err = c.ResolveResourceKind(ctx, &ns, "members")
	require.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	require.ErrorContains(t, err, `resource "members" is not registered`)
}

func TestCOSIIsReadOnly(t *testing.T) {
	e := start(t)
	admin := e.client(t, e.bundle, role.Admin)

	// (COSI's client wraps the gRPC status; the reason is in the text)
	err := admin.COSI.Destroy(t.Context(), runtime.NewMachineStatus().Metadata())
	require.ErrorContains(t, err, "PermissionDenied desc = MachineStatuses.runtime.talos.dev is written by the node only")

	reader := e.client(t, e.bundle, role.Reader)
	err = reader.COSI.Destroy(t.Context(), runtime.NewMachineStatus().Metadata())
	require.ErrorContains(t, err, "/cosi.resource.State/Destroy: client certificate lacks role [os:admin]")
}

func TestLegacyMachineAPI(t *testing.T) {
	e := start(t)
	c := e.client(t, e.bundle, role.Admin)
	ctx := t.Context()

	up, err := c.UpgradeWithOptions(ctx, client.WithUpgradeImage("10.0.2.100:5000/lab/installer:1.1.0")) //nolint:staticcheck // the legacy call is what is tested
	require.NoError(t, err)
	require.Contains(t, up.Messages[0].Ack, "lab-1.1.0+3.efi")
	require.NotEmpty(t, up.Messages[0].ActorId)
	require.Equal(t, []string{"10.0.2.100:5000/lab/installer:1.1.0"}, e.node.upgraded)
	require.False(t, <-e.node.reboots)

	require.NoError(t, c.Rollback(ctx))
	require.Equal(t, 1, e.node.rollback)
	<-e.node.reboots

	require.NoError(t, c.Reboot(ctx))
	require.False(t, <-e.node.reboots)

	require.NoError(t, c.Shutdown(ctx))
	require.True(t, <-e.node.reboots)

	sl, err := c.ServiceList(ctx)
	require.NoError(t, err)
	svcs := sl.Messages[0].Services
	require.Len(t, svcs, 2)
	require.Equal(t, nodeapi.ServiceTPMUnlock, svcs[0].Id)
	require.True(t, svcs[0].Health.Healthy)
	require.False(t, svcs[1].Health.Healthy)
	require.Equal(t, "Failed", svcs[1].State)

	rc, err := c.Read(ctx, api.BootIDPath)
	require.NoError(t, err)
	b, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	require.Equal(t, "bbbbbbbb", strings.TrimSpace(string(b)))

	rc, err = c.Read(ctx, "/run/labos/status.json")
	if err == nil {
		_, err = io.ReadAll(rc)
	}
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "labos serves only /proc/sys/kernel/random/boot_id")
}

// pullAsTalosctl is talosctl v1.14.1's imagePullInternal: stream Pull and
// take the name from the final message.
func pullAsTalosctl(ctx context.Context, c *client.Client, ref string) (string, error) {
	stream, err := c.ImageClient.Pull(ctx, &machine.ImageServicePullRequest{ImageRef: ref})
	if err != nil {
		return "", err
	}

	var name string

	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return name, nil
		}

		if err != nil {
			return "", err
		}

		if n := resp.GetName(); n != "" {
			name = n
		}
	}
}

// upgradeAsTalosctl is talosctl v1.14.1's upgradeInternal: stream
// LifecycleService.Upgrade, collecting messages and the exit code.
func upgradeAsTalosctl(ctx context.Context, c *client.Client, ref string) (msgs []string, exit int32, err error) {
	stream, err := c.LifecycleClient.Upgrade(ctx, &machine.LifecycleServiceUpgradeRequest{
		Source: &machine.InstallArtifactsSource{ImageName: ref},
	})
	if err != nil {
		return nil, 0, err
	}

	exit = -1

	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return msgs, exit, nil
		}

		if err != nil {
			return msgs, exit, err
		}

		switch p := resp.GetProgress().GetResponse().(type) {
		case *machine.LifecycleServiceInstallProgress_Message:
			msgs = append(msgs, p.Message)
		case *machine.LifecycleServiceInstallProgress_ExitCode:
			exit = p.ExitCode
		}
	}
}

func TestUpgradeThroughImageAndLifecycleServices(t *testing.T) {
	e := start(t)
	c := e.client(t, e.bundle, role.Admin)
	ctx := t.Context()
	ref := "10.0.2.100:5000/lab/installer:1.1.0"

	// not pulled: the install runs and fails, reported as an exit code
	msgs, exit, err := upgradeAsTalosctl(ctx, c, ref)
	require.NoError(t, err)
	require.EqualValues(t, 1, exit)
	require.Contains(t, strings.Join(msgs, "\n"), "was not pulled")

	name, err := pullAsTalosctl(ctx, c, ref)
	require.NoError(t, err)
	require.Equal(t, ref, name)

	list, err := c.ImageClient.List(ctx, &machine.ImageServiceListRequest{})
	require.NoError(t, err)
	img, err := list.Recv()
	require.NoError(t, err)
	require.Equal(t, ref, img.GetName())
	require.Equal(t, "sha256:1111", img.GetDigest())

	msgs, exit, err = upgradeAsTalosctl(ctx, c, ref)
	require.NoError(t, err)
	require.Zero(t, exit, "%v", msgs)
	require.Equal(t, []string{ref}, e.node.installed)
	require.Equal(t, []string{ref}, e.node.pulls, "Install used the pulled image without pulling again")
	require.Empty(t, e.node.reboots, "LifecycleService.Upgrade does not reboot")

	_, err = pullAsTalosctl(ctx, c, "10.0.2.100:5000/lab/missing:9")
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "manifest unknown")
}

// trackAsTalosctl is the wait talosctl v1.14.1 does after upgrade, reboot
// and shutdown (cmd/talosctl/pkg/talos/action/node.go): read the boot ID,
// open the event stream, run the action, follow the events; on a "reboot"
// sequence event or a dropped connection reconnect from the last event ID
// until a MachineStatusEvent says running and ready; then check the boot
// ID changed.
func trackAsTalosctl(ctx context.Context, t *testing.T, c *client.Client, action func(context.Context) (string, error)) []string {
	t.Helper()

	bootID := func() string {
		rc, err := c.Read(ctx, api.BootIDPath)
		require.NoError(t, err)
		b, err := io.ReadAll(rc)
		require.NoError(t, err)

		return strings.TrimSpace(string(b))
	}

	before := bootID()

	var (
		seen    []string
		lastID  string
		actorID string
		first   = true
	)

	for attempt := 0; ; attempt++ {
		require.Less(t, attempt, 200, "node never came back: %v", seen)

		opts := []client.EventsOptionFunc{client.WithTailEvents(0)}
		if lastID != "" {
			opts = []client.EventsOptionFunc{client.WithTailID(lastID)}
		}

		sctx, cancel := context.WithCancel(ctx)
		ch := make(chan client.EventResult)

		if err := c.EventsWatchV2(sctx, ch, opts...); err != nil {
			cancel()
			time.Sleep(50 * time.Millisecond)

			continue
		}

		if first {
			var err error
			actorID, err = action(ctx)
			require.NoError(t, err)

			first = false
		}

		done, reconnect := false, false

		for !done && !reconnect {
			ev := <-ch
			if ev.Event.ID != "" {
				lastID = ev.Event.ID
			}

			if ms, ok := ev.Event.Payload.(*machine.MachineStatusEvent); ok {
				seen = append(seen, "stage "+ms.GetStage().String())

				if ms.GetStage() == machine.MachineStatusEvent_RUNNING && ms.GetStatus().GetReady() {
					done = true

					break
				}
			}

			if ev.Error != nil {
				reconnect = true

				break
			}

			if seq, ok := ev.Event.Payload.(*machine.SequenceEvent); ok && ev.Event.ActorID == actorID {
				seen = append(seen, "sequence "+seq.GetSequence()+" "+seq.GetAction().String())

				if seq.GetSequence() == "reboot" {
					reconnect = true
				}
			}
		}

		cancel()

		if done {
			break
		}
	}

	require.NotEqual(t, before, bootID(), "the boot ID changed: the node rebooted")

	return seen
}

func TestEventsUntilNodeIsBack(t *testing.T) {
	e := start(t)
	e.rebootOnRequest(t)

	c := e.client(t, e.bundle, role.Admin)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	// talosctl reboot
	seen := trackAsTalosctl(ctx, t, c, func(ctx context.Context) (string, error) {
		resp, err := c.RebootWithResponse(ctx)
		if err != nil {
			return "", err
		}

		return resp.GetMessages()[0].GetActorId(), nil
	})
	require.Contains(t, seen, "sequence reboot START")
	require.Equal(t, "stage RUNNING", seen[len(seen)-1])
	require.Contains(t, seen, "stage BOOTING", "the events of the new boot were replayed from the last ID")

	// talosctl upgrade --legacy
	seen = trackAsTalosctl(ctx, t, c, func(ctx context.Context) (string, error) {
		resp, err := c.UpgradeWithOptions(ctx, client.WithUpgradeImage("10.0.2.100:5000/lab/installer:1.1.0")) //nolint:staticcheck // legacy path
		if err != nil {
			return "", err
		}

		return resp.GetMessages()[0].GetActorId(), nil
	})
	require.Contains(t, seen, "sequence upgrade START")
	require.Contains(t, seen, "sequence reboot START")

	// talosctl upgrade (1.13+): pull, lifecycle upgrade, then reboot and wait
	ref := "10.0.2.100:5000/lab/installer:1.2.0"
	_, err := pullAsTalosctl(ctx, c, ref)
	require.NoError(t, err)
	_, exit, err := upgradeAsTalosctl(ctx, c, ref)
	require.NoError(t, err)
	require.Zero(t, exit)
	trackAsTalosctl(ctx, t, c, func(ctx context.Context) (string, error) {
		resp, err := c.RebootWithResponse(ctx)
		if err != nil {
			return "", err
		}

		return resp.GetMessages()[0].GetActorId(), nil
	})

	require.Equal(t, 4, e.boots)
}

func TestEventsTail(t *testing.T) {
	e := start(t)
	c := e.client(t, e.bundle, role.Reader)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	collect := func(n int, opts ...client.EventsOptionFunc) []client.Event {
		ch := make(chan client.EventResult)
		sctx, stop := context.WithCancel(ctx)
		defer stop()

		require.NoError(t, c.EventsWatchV2(sctx, ch, opts...))

		var out []client.Event
		for len(out) < n {
			ev := <-ch
			require.NoError(t, ev.Error)
			out = append(out, ev.Event)
		}

		return out
	}

	// the boot published 5 events: sequence start, stage booting, apid
	// running, sequence stop, stage running
	all := collect(5, client.WithTailEvents(-1))
	boot, ok := all[0].Payload.(*machine.SequenceEvent)
	require.True(t, ok)
	require.Equal(t, "boot", boot.GetSequence())

	last2 := collect(2, client.WithTailEvents(2))
	require.Equal(t, all[3].ID, last2[0].ID)

	after := collect(1, client.WithTailID(all[3].ID))
	require.Equal(t, all[4].ID, after[0].ID)
	ms, ok := after[0].Payload.(*machine.MachineStatusEvent)
	require.True(t, ok)
	require.True(t, ms.GetStatus().GetReady())

	recent := collect(5, client.WithTailDuration(time.Minute))
	require.Equal(t, all[0].ID, recent[0].ID)
}

func TestAuthorization(t *testing.T) {
	e := start(t)
	ctx := t.Context()

	reader := e.client(t, e.bundle, role.Reader)

	_, err := reader.Version(ctx)
	require.NoError(t, err)

	_, err = reader.UpgradeWithOptions(ctx, client.WithUpgradeImage("x")) //nolint:staticcheck // legacy call's role
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "/machine.MachineService/Upgrade: client certificate lacks role [os:admin]")
	require.Empty(t, e.node.upgraded)

	_, err = pullAsTalosctl(ctx, reader, "x")
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "/machine.ImageService/Pull: client certificate lacks role [os:admin os:operator]")

	operator := e.client(t, e.bundle, role.Operator)
	_, _, err = upgradeAsTalosctl(ctx, operator, "x")
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "/machine.LifecycleService/Upgrade: client certificate lacks role [os:admin]")

	err = reader.Reboot(ctx)
	require.ErrorContains(t, err, "/machine.MachineService/Reboot: client certificate lacks role [os:admin os:operator]")

	// as on Talos, reading files is for admins only; talosctl's tracker
	// then skips the boot ID check
	rc, err := reader.Read(ctx, api.BootIDPath)
	if err == nil {
		_, err = io.ReadAll(rc)
	}
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "/machine.MachineService/Read: client certificate lacks role [os:admin]")

	// a running node is never reconfigured, not even by an admin
	admin := e.client(t, e.bundle, role.Admin)
	_, err = admin.ApplyConfiguration(ctx, &machine.ApplyConfigurationRequest{Data: []byte("version: v1alpha1\n")})
	require.Equal(t, codes.FailedPrecondition, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "accepts one configuration")

	// a method labos does not serve is refused for everyone
	_, err = admin.Kubeconfig(ctx)
	require.Equal(t, codes.Unimplemented, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "not served by labos")

	other, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent)
	require.NoError(t, err)

	// a client whose certificate comes from another CA (and trusts it) is refused
	stranger := e.client(t, other, role.Admin)
	_, err = stranger.Version(ctx)
	require.Error(t, err)
}
