package talos

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// fakeImages is a node's ImageService listing what it holds (containerd
// names a pinned reference repo@sha256:..., dropping the tag).
type fakeImages struct {
	machineapi.UnimplementedImageServiceServer

	images []*machineapi.ImageServiceListResponse
	ns     common.ContainerdNamespace
}

func (f *fakeImages) List(req *machineapi.ImageServiceListRequest, s grpc.ServerStreamingServer[machineapi.ImageServiceListResponse]) error {
	f.ns = req.GetContainerd().GetNamespace()

	for _, img := range f.images {
		if err := s.Send(img); err != nil {
			return err
		}
	}

	return nil
}

// Staged asks ImageService.List in the system namespace (where Stage pulls
// and the switch installs from) and matches the image by name or by its
// pinned digest.
func TestStagedListsSystemImages(t *testing.T) {
	const (
		digest = "sha256:4a1f000000000000000000000000000000000000000000000000000000000000"
		image  = "registry.region.example:5000/labos/installer:v1.2.1@" + digest
	)

	fake := &fakeImages{}
	sock := filepath.Join(t.TempDir(), "api.sock")

	l, err := net.Listen("unix", sock)
	require.NoError(t, err)

	srv := grpc.NewServer()
	machineapi.RegisterImageServiceServer(srv, fake)

	go srv.Serve(l) //nolint:errcheck
	t.Cleanup(srv.Stop)

	c, err := client.New(t.Context(), client.WithUnixSocket(sock), client.WithGRPCDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials())))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	n := &node{c: c}

	held, _, err := n.Staged(t.Context(), image)
	require.NoError(t, err)
	assert.False(t, held, "nothing listed")
	assert.Equal(t, common.ContainerdNamespace_NS_SYSTEM, fake.ns)

	fake.images = []*machineapi.ImageServiceListResponse{
		{Name: "registry.region.example:5000/labos/installer:v1.2.0", Digest: "sha256:0ld", Size: 1},
		{Name: "registry.region.example:5000/labos/installer@" + digest, Digest: digest, Size: 98566144},
	}

	held, size, err := n.Staged(t.Context(), image)
	require.NoError(t, err)
	assert.True(t, held)
	assert.Equal(t, int64(98566144), size)

	fake.images = []*machineapi.ImageServiceListResponse{{Name: image, Size: 7}}

	held, size, err = n.Staged(t.Context(), image)
	require.NoError(t, err)
	assert.True(t, held, "listed by the reference itself")
	assert.Equal(t, int64(7), size)
}
