package api

import (
	"context"
	"os"
	goruntime "runtime"

	"github.com/rs/xid"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// versionInfo is Talos's VersionInfo for a node standing in for tag: Tag is
// what clients compare to choose their API (talosctl upgrade takes the
// ImageService + LifecycleService path for Talos > 1.13.0-alpha.2), and
// Sha, where Talos reports its build's source revision, carries the
// image's own version.
func versionInfo(tag, image string) *machine.VersionInfo {
	return &machine.VersionInfo{
		Tag:       tag,
		Sha:       image,
		GoVersion: goruntime.Version(),
		Os:        goruntime.GOOS,
		Arch:      goruntime.GOARCH,
	}
}

// Version reports the Talos version labos stands in for and the image version.
func (s *Server) Version(context.Context, *emptypb.Empty) (*machine.VersionResponse, error) {
	return &machine.VersionResponse{Messages: []*machine.Version{{
		Metadata: s.md(),
		Version:  versionInfo(s.Tag, s.ImageVersion),
		Platform: &machine.PlatformInfo{Name: "labos", Mode: "metal"},
		Features: &machine.FeaturesInfo{Rbac: true},
	}}}, nil
}

// newActor returns the ID tying the events of one API call together, as
// Talos returns it in the reply's actor_id.
func newActor() string { return xid.New().String() }

func (s *Server) sequence(actor, name string, action machine.SequenceEvent_Action, err error) {
	ev := &machine.SequenceEvent{Sequence: name, Action: action}
	if err != nil {
		ev.Error = &common.Error{Code: common.Code_FATAL, Message: err.Error()}
	}

	s.Runtime.Events.Publish(actor, ev)
}

// rebooting announces a reboot or power off the node is about to do: the
// sequence event talosctl's tracker reconnects on, and the stage that is
// not "running, ready" until the node is back.
func (s *Server) rebooting(actor string, powerOff bool) {
	seq, stage := "reboot", runtime.MachineStageRebooting
	if powerOff {
		seq, stage = "shutdown", runtime.MachineStageShuttingDown
	}

	s.Runtime.SetMachineStatus(stage, []runtime.UnmetCondition{{Name: seq, Reason: "requested through the API"}}) //nolint:errcheck // the event went out; the resource follows
	s.sequence(actor, seq, machine.SequenceEvent_START, nil)
}

// Upgrade is the legacy upgrade (Talos < 1.13 clients, talosctl --legacy):
// pull, install and reboot in one call.
func (s *Server) Upgrade(ctx context.Context, req *machine.UpgradeRequest) (*machine.UpgradeResponse, error) {
	if req.GetImage() == "" {
		return nil, status.Error(codes.InvalidArgument, "upgrade: image is required")
	}

	actor := newActor()
	s.sequence(actor, "upgrade", machine.SequenceEvent_START, nil)

	ack, err := s.Node.Upgrade(ctx, req.GetImage())
	if err != nil {
		s.sequence(actor, "upgrade", machine.SequenceEvent_STOP, err)

		return nil, status.Errorf(codes.FailedPrecondition, "upgrade: %v", err)
	}

	s.sequence(actor, "upgrade", machine.SequenceEvent_STOP, nil)
	s.rebooting(actor, false)

	return &machine.UpgradeResponse{Messages: []*machine.Upgrade{{Metadata: s.md(), Ack: ack, ActorId: actor}}}, nil
}

// Rollback boots the previous blessed entry.
func (s *Server) Rollback(ctx context.Context, _ *machine.RollbackRequest) (*machine.RollbackResponse, error) {
	if _, err := s.Node.Rollback(ctx); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "rollback: %v", err)
	}

	s.rebooting(newActor(), false)

	return &machine.RollbackResponse{Messages: []*machine.Rollback{{Metadata: s.md()}}}, nil
}

// Reboot reboots (mode POWERCYCLE is a reboot too).
func (s *Server) Reboot(ctx context.Context, _ *machine.RebootRequest) (*machine.RebootResponse, error) {
	if err := s.Node.Reboot(ctx, false); err != nil {
		return nil, status.Errorf(codes.Internal, "reboot: %v", err)
	}

	actor := newActor()
	s.rebooting(actor, false)

	return &machine.RebootResponse{Messages: []*machine.Reboot{{Metadata: s.md(), ActorId: actor}}}, nil
}

// Shutdown powers the node off.
func (s *Server) Shutdown(ctx context.Context, _ *machine.ShutdownRequest) (*machine.ShutdownResponse, error) {
	if err := s.Node.Reboot(ctx, true); err != nil {
		return nil, status.Errorf(codes.Internal, "shutdown: %v", err)
	}

	actor := newActor()
	s.rebooting(actor, true)

	return &machine.ShutdownResponse{Messages: []*machine.Shutdown{{Metadata: s.md(), ActorId: actor}}}, nil
}

// ServiceList reports each labos check as a service with health.
func (s *Server) ServiceList(context.Context, *emptypb.Empty) (*machine.ServiceListResponse, error) {
	st := s.Node.Status()
	now := timestamppb.Now()

	var svcs []*machine.ServiceInfo

	for _, c := range st.Checks {
		state := "Running"
		if !c.Healthy {
			state = "Failed"
		}

		svcs = append(svcs, &machine.ServiceInfo{
			Id:    c.Name,
			State: state,
			Events: &machine.ServiceEvents{Events: []*machine.ServiceEvent{
				{Msg: c.Message, State: state, Ts: now},
			}},
			Health: &machine.ServiceHealth{Healthy: c.Healthy, LastMessage: c.Message, LastChange: now},
		})
	}

	return &machine.ServiceListResponse{Messages: []*machine.ServiceList{{Metadata: s.md(), Services: svcs}}}, nil
}

// ApplyConfiguration is refused once the node runs: a lab node takes its
// configuration once, in maintenance mode (Talos would accept a new config
// from an admin here; labos does not reconfigure a running node).
func (s *Server) ApplyConfiguration(context.Context, *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	return nil, status.Errorf(codes.FailedPrecondition, "apply configuration: %v", ErrConfigured)
}

// Read serves the kernel's boot ID, the one file talosctl reads to see a
// reboot happened; every other path is refused (labos is not a general
// file server). As on Talos, Read needs the admin role.
func (s *Server) Read(req *machine.ReadRequest, stream grpc.ServerStreamingServer[common.Data]) error {
	if req.GetPath() != BootIDPath {
		return status.Errorf(codes.PermissionDenied, "read %s: labos serves only %s", req.GetPath(), BootIDPath)
	}

	f := s.BootIDFile
	if f == "" {
		f = BootIDPath
	}

	b, err := os.ReadFile(f)
	if err != nil {
		return status.Errorf(codes.NotFound, "read: %v", err)
	}

	return stream.Send(&common.Data{Metadata: s.md(), Bytes: b})
}
