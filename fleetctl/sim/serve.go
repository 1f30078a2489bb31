package sim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/protobuf"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/labfleet/labfleet/fleetctl/driver"
)

// Server serves the Talos machine API subset fleetctl uses (Version,
// Upgrade, Rollback, Reboot, ServiceList; the calls a Talos v1.14 node
// serves, answered as labos answers them) for simulated nodes, one listener
// per node on 127.0.0.1, with mTLS.
type Server struct {
	// Endpoints maps node keys (cluster/node) to their 127.0.0.1:port address.
	Endpoints map[string]string

	servers []*grpc.Server
}

// Serve starts one gRPC server per node key. tlsCfg must require client certificates.
func Serve(f *Fleet, keys []string, tlsCfg *tls.Config) (*Server, error) {
	s := &Server{Endpoints: make(map[string]string, len(keys))}

	for _, key := range keys {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			s.Close()

			return nil, fmt.Errorf("listening for simulated node %s: %w", key, err)
		}

		g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
		machineapi.RegisterMachineServiceServer(g, &machineService{f: f, key: key})

		if len(f.b.Schematics) > 0 || f.b.TalosLike {
			v1alpha1.RegisterStateServer(g, &stateService{f: f, key: key})
		}

		go g.Serve(lis) //nolint:errcheck // ends with Stop

		s.servers = append(s.servers, g)
		s.Endpoints[key] = lis.Addr().String()
	}

	return s, nil
}

// Close stops every server.
func (s *Server) Close() {
	for _, g := range s.servers {
		g.Stop()
	}
}

type machineService struct {
	machineapi.UnimplementedMachineServiceServer

	f   *Fleet
	key string
}

func (m *machineService) wait(ctx context.Context) error {
	return sleep(ctx, time.Duration(m.f.b.Latency))
}

func grpcErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, driver.ErrInProgress):
		return status.Error(codes.FailedPrecondition, "SIMULATED: upgrade in progress")
	case errors.Is(err, ErrUnreachable):
		return status.Error(codes.Unavailable, "SIMULATED: "+err.Error())
	case errors.Is(err, ErrEtcdQuorum):
		// Talos answers with a plain error (gRPC Unknown), not a precondition code.
		return status.Error(codes.Unknown, "SIMULATED: "+err.Error())
	case errors.Is(err, ErrNoPrevious):
		return status.Error(codes.NotFound, "SIMULATED: "+err.Error())
	}

	return status.Error(codes.Internal, err.Error())
}

func (m *machineService) Version(ctx context.Context, _ *emptypb.Empty) (*machineapi.VersionResponse, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}

	v, err := m.f.Version(m.key)
	if err != nil {
		return nil, grpcErr(err)
	}

	return &machineapi.VersionResponse{Messages: []*machineapi.Version{{
		Version: versionInfo(v, m.f.b.TalosLike),
	}}}, nil
}

// TalosTag is the Talos release a simulated labos node stands in for.
const TalosTag = "v1.14.1"

// versionInfo answers as labos does (the Talos release as Tag, the image
// version in Sha) or, for TalosLike fleets, as a stock Talos build of
// release v (Tag v, Sha its git revision).
func versionInfo(v string, talosLike bool) *machineapi.VersionInfo {
	if talosLike {
		return &machineapi.VersionInfo{Tag: v, Sha: "8a1e4f3c", Os: "linux", Arch: "amd64"}
	}

	return &machineapi.VersionInfo{Tag: TalosTag, Sha: v, Os: "labfleet-sim", Arch: "amd64"}
}

func (m *machineService) Upgrade(ctx context.Context, req *machineapi.UpgradeRequest) (*machineapi.UpgradeResponse, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}

	if err := m.f.UpgradePreserve(m.key, VersionOf(req.GetImage()), req.GetPreserve()); err != nil {
		return nil, grpcErr(err)
	}

	return &machineapi.UpgradeResponse{Messages: []*machineapi.Upgrade{{Ack: "SIMULATED: upgrade request received"}}}, nil
}

func (m *machineService) Rollback(ctx context.Context, _ *machineapi.RollbackRequest) (*machineapi.RollbackResponse, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}

	if err := m.f.Rollback(m.key); err != nil {
		return nil, grpcErr(err)
	}

	return &machineapi.RollbackResponse{Messages: []*machineapi.Rollback{{}}}, nil
}

func (m *machineService) Reboot(ctx context.Context, _ *machineapi.RebootRequest) (*machineapi.RebootResponse, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}

	if err := m.f.Reboot(m.key); err != nil {
		return nil, grpcErr(err)
	}

	return &machineapi.RebootResponse{Messages: []*machineapi.Reboot{{}}}, nil
}

func (m *machineService) ServiceList(ctx context.Context, _ *emptypb.Empty) (*machineapi.ServiceListResponse, error) {
	if err := m.wait(ctx); err != nil {
		return nil, err
	}

	svcs, err := m.f.Services(m.key)
	if err != nil {
		return nil, grpcErr(err)
	}

	list := &machineapi.ServiceList{}
	for _, s := range svcs {
		list.Services = append(list.Services, &machineapi.ServiceInfo{
			Id: s.ID, State: s.State,
			Health: &machineapi.ServiceHealth{Healthy: s.Healthy, Unknown: s.NoHealthCheck, LastMessage: s.Message},
		})
	}

	return &machineapi.ServiceListResponse{Messages: []*machineapi.ServiceList{list}}, nil
}

// stateService answers the COSI State Get for the resources of a Talos node
// the driver reads: the image-factory schematic (ImageFactorySchematic), from
// the version the simulated node runs now (Behaviour.Schematics), and, for a
// TalosLike fleet, the boot ID (BootID). Every other resource is not found,
// as on a node that has none of it.
type stateService struct {
	v1alpha1.UnimplementedStateServer

	f   *Fleet
	key string
}

func (s *stateService) Get(_ context.Context, req *v1alpha1.GetRequest) (*v1alpha1.GetResponse, error) {
	if s.f.b.TalosLike && req.GetType() == runtime.BootIDType && req.GetId() == runtime.BootIDID {
		return s.bootID()
	}

	if req.GetType() != runtime.ImageFactorySchematicType || req.GetId() != runtime.ImageFactorySchematicID {
		return nil, status.Errorf(codes.NotFound, "resource %s(%s/%s) doesn't exist", req.GetType(), req.GetNamespace(), req.GetId())
	}

	id, err := s.f.Image(s.key)
	if err != nil {
		return nil, grpcErr(err)
	}

	schematic, ok := s.f.b.Schematics[id.Version]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "resource %s(%s/%s) doesn't exist", req.GetType(), req.GetNamespace(), req.GetId())
	}

	r := runtime.NewImageFactorySchematic(runtime.NamespaceName, runtime.ImageFactorySchematicID)
	r.TypedSpec().SchematicID = schematic

	return getResponse(r)
}

func (s *stateService) bootID() (*v1alpha1.GetResponse, error) {
	id, err := s.f.BootID(s.key)
	if err != nil {
		return nil, grpcErr(err)
	}

	r := runtime.NewBootID()
	r.TypedSpec().BootID = id

	return getResponse(r)
}

func getResponse(r resource.Resource) (*v1alpha1.GetResponse, error) {
	pr, err := protobuf.FromResource(r)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", r.Metadata().Type(), err)
	}

	m, err := pr.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", r.Metadata().Type(), err)
	}

	return &v1alpha1.GetResponse{Resource: m}, nil
}
