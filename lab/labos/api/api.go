// Package api serves the subset of the Talos machine API a lab node
// answers (Version, Upgrade, Rollback, Reboot, ServiceList, Read of the
// status document) over gRPC with mutual TLS, so talosctl, machinery's
// client and fleetctl drive a lab node exactly as they drive a Talos node.
package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"time"

	cx509 "github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Node is what the API asks the running system to do.
type Node interface {
	// Status is the current status document.
	Status() nodeapi.Status
	// Upgrade installs image and schedules a reboot shortly after the
	// reply has been sent; it returns a human acknowledgement.
	Upgrade(ctx context.Context, image string) (string, error)
	// Rollback pins the previous blessed entry and schedules a reboot.
	Rollback(ctx context.Context) (string, error)
	// Reboot schedules a reboot (or power off).
	Reboot(ctx context.Context, powerOff bool) error
}

// Server implements machine.MachineServiceServer.
type Server struct {
	machine.UnimplementedMachineServiceServer

	Node Node
	Tag  string // image version, the VersionInfo tag
	Host string // hostname in response metadata
	// StatusFile is where the status document really is (tests point it
	// elsewhere); Read accepts only nodeapi.StatusPath.
	StatusFile string
}

func (s *Server) md() *common.Metadata { return &common.Metadata{Hostname: s.Host} }

// Version reports the image version.
func (s *Server) Version(context.Context, *emptypb.Empty) (*machine.VersionResponse, error) {
	return &machine.VersionResponse{Messages: []*machine.Version{{
		Metadata: s.md(),
		Version: &machine.VersionInfo{
			Tag:       s.Tag,
			GoVersion: runtime.Version(),
			Os:        runtime.GOOS,
			Arch:      runtime.GOARCH,
		},
		Platform: &machine.PlatformInfo{Name: "labos", Mode: "metal"},
	}}}, nil
}

// Upgrade installs the UKI from req.Image and reboots into it.
func (s *Server) Upgrade(ctx context.Context, req *machine.UpgradeRequest) (*machine.UpgradeResponse, error) {
	if err := requireRole(ctx, role.Admin); err != nil {
		return nil, err
	}

	if req.GetImage() == "" {
		return nil, status.Error(codes.InvalidArgument, "upgrade: image is required")
	}

	ack, err := s.Node.Upgrade(ctx, req.GetImage())
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "upgrade: %v", err)
	}

	return &machine.UpgradeResponse{Messages: []*machine.Upgrade{{Metadata: s.md(), Ack: ack}}}, nil
}

// Rollback boots the previous blessed entry.
func (s *Server) Rollback(ctx context.Context, _ *machine.RollbackRequest) (*machine.RollbackResponse, error) {
	if err := requireRole(ctx, role.Admin); err != nil {
		return nil, err
	}

	if _, err := s.Node.Rollback(ctx); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "rollback: %v", err)
	}

	return &machine.RollbackResponse{Messages: []*machine.Rollback{{Metadata: s.md()}}}, nil
}

// Reboot reboots (or powers off, mode POWERCYCLE is a reboot too).
func (s *Server) Reboot(ctx context.Context, _ *machine.RebootRequest) (*machine.RebootResponse, error) {
	if err := requireRole(ctx, role.Admin, role.Operator); err != nil {
		return nil, err
	}

	if err := s.Node.Reboot(ctx, false); err != nil {
		return nil, status.Errorf(codes.Internal, "reboot: %v", err)
	}

	return &machine.RebootResponse{Messages: []*machine.Reboot{{Metadata: s.md()}}}, nil
}

// Shutdown powers the node off.
func (s *Server) Shutdown(ctx context.Context, _ *machine.ShutdownRequest) (*machine.ShutdownResponse, error) {
	if err := requireRole(ctx, role.Admin, role.Operator); err != nil {
		return nil, err
	}

	if err := s.Node.Reboot(ctx, true); err != nil {
		return nil, status.Errorf(codes.Internal, "shutdown: %v", err)
	}

	return &machine.ShutdownResponse{Messages: []*machine.Shutdown{{Metadata: s.md()}}}, nil
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
func (s *Server) ApplyConfiguration(ctx context.Context, _ *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	if err := requireRole(ctx, role.Admin); err != nil {
		return nil, err
	}

	return nil, status.Errorf(codes.FailedPrecondition, "apply configuration: %v", ErrConfigured)
}

// Read streams the status document; every other path is refused. As on
// Talos, Read needs the admin role.
func (s *Server) Read(req *machine.ReadRequest, stream grpc.ServerStreamingServer[common.Data]) error {
	if err := requireRole(stream.Context(), role.Admin); err != nil {
		return err
	}

	if req.GetPath() != nodeapi.StatusPath {
		return status.Errorf(codes.PermissionDenied, "read: only %s is served", nodeapi.StatusPath)
	}

	f := s.StatusFile
	if f == "" {
		f = nodeapi.StatusPath
	}

	b, err := os.ReadFile(f)
	if err != nil {
		return status.Errorf(codes.NotFound, "read: %v", err)
	}

	return stream.Send(&common.Data{Metadata: s.md(), Bytes: b})
}

// requireRole checks the client certificate's organizations (Talos encodes
// roles there) for one of roles.
func requireRole(ctx context.Context, roles ...role.Role) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer")
	}

	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return status.Error(codes.Unauthenticated, "no client certificate")
	}

	for _, org := range ti.State.PeerCertificates[0].Subject.Organization {
		if slices.Contains(roles, role.Role(org)) {
			return nil
		}
	}

	return status.Errorf(codes.PermissionDenied, "client certificate lacks role %v", roles)
}

// TLSConfig issues a server certificate from the machine CA (valid for ips
// and dns names) and requires client certificates chaining to that CA.
func TLSConfig(caCrt, caKey []byte, ips []net.IP, dns []string) (*tls.Config, error) {
	ca, err := cx509.NewCertificateAuthorityFromCertificateAndKey(&cx509.PEMEncodedCertificateAndKey{Crt: caCrt, Key: caKey})
	if err != nil {
		return nil, fmt.Errorf("loading machine CA: %w", err)
	}

	kp, err := cx509.NewKeyPair(ca,
		cx509.CommonName("labos"),
		cx509.IPAddresses(ips),
		cx509.DNSNames(dns),
		cx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}),
		// the node's clock may lag the issuer's a little after boot
		cx509.NotBefore(time.Now().Add(-time.Hour)),
		cx509.NotAfter(time.Now().Add(365*24*time.Hour)),
	)
	if err != nil {
		return nil, fmt.Errorf("issuing API server certificate: %w", err)
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caCrt) {
		return nil, errors.New("loading machine CA: no certificate in PEM")
	}

	return &tls.Config{
		Certificates: []tls.Certificate{*kp.Certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// Serve serves s on lis until ctx ends.
func Serve(ctx context.Context, lis net.Listener, s *Server, cfg *tls.Config) error {
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	machine.RegisterMachineServiceServer(g, s)

	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()

	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving machine API: %w", err)
	}

	return nil
}
