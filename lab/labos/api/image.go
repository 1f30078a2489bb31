package api

import (
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// imageService is Talos 1.13+'s ImageService as labos needs it: Pull keeps
// a verified installer image on the node so LifecycleService.Upgrade can
// install it without pulling again; List shows what was pulled. labos has
// no containerd: the containerd instance in requests is accepted and
// ignored (there is one image store).
type imageService struct {
	machine.UnimplementedImageServiceServer

	s *Server
}

// Pull pulls req.ImageRef and answers with its name once it is kept, as
// Talos does after its (optional) progress messages.
func (i *imageService) Pull(req *machine.ImageServicePullRequest, stream grpc.ServerStreamingServer[machine.ImageServicePullResponse]) error {
	if req.GetImageRef() == "" {
		return status.Error(codes.InvalidArgument, "image pull: image_ref is required")
	}

	img, err := i.s.Node.Pull(stream.Context(), req.GetImageRef())
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "image pull %s: %v", req.GetImageRef(), err)
	}

	return stream.Send(&machine.ImageServicePullResponse{Response: &machine.ImageServicePullResponse_Name{Name: img.Name}})
}

// List streams the pulled images.
func (i *imageService) List(_ *machine.ImageServiceListRequest, stream grpc.ServerStreamingServer[machine.ImageServiceListResponse]) error {
	for _, img := range i.s.Node.Images() {
		if err := stream.Send(&machine.ImageServiceListResponse{
			Name: img.Name, Digest: img.Digest, Size: img.Size, CreatedAt: timestamppb.New(img.Created),
		}); err != nil {
			return err
		}
	}

	return nil
}
