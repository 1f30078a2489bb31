package api

import (
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// lifecycleService is Talos 1.13+'s LifecycleService.Upgrade: it installs
// an image ImageService.Pull brought to the node and reports progress
// messages and an exit code; it does not reboot (talosctl asks for the
// reboot next, and waits for the node through Events).
type lifecycleService struct {
	machine.UnimplementedLifecycleServiceServer

	s *Server
}

func progress(p *machine.LifecycleServiceInstallProgress) *machine.LifecycleServiceUpgradeResponse {
	return &machine.LifecycleServiceUpgradeResponse{Progress: p}
}

// Upgrade installs req.Source.ImageName. As on Talos, an install that ran
// and failed is an exit code (with the reason as a message), not a gRPC
// error; a request that cannot start is a gRPC error.
func (l *lifecycleService) Upgrade(req *machine.LifecycleServiceUpgradeRequest, stream grpc.ServerStreamingServer[machine.LifecycleServiceUpgradeResponse]) error {
	ref := req.GetSource().GetImageName()
	if ref == "" {
		return status.Error(codes.InvalidArgument, "upgrade: installer image name is required")
	}

	actor := newActor()
	l.s.sequence(actor, "upgrade", machine.SequenceEvent_START, nil)

	msg, err := l.s.Node.Install(stream.Context(), ref)
	l.s.sequence(actor, "upgrade", machine.SequenceEvent_STOP, err)

	var code int32
	if err != nil {
		msg, code = "upgrade failed: "+err.Error(), 1
	}

	if err := stream.Send(progress(&machine.LifecycleServiceInstallProgress{
		Response: &machine.LifecycleServiceInstallProgress_Message{Message: msg},
	})); err != nil {
		return err
	}

	return stream.Send(progress(&machine.LifecycleServiceInstallProgress{
		Response: &machine.LifecycleServiceInstallProgress_ExitCode{ExitCode: code},
	}))
}
