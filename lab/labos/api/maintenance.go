package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Configurer accepts the node's one machine configuration.
type Configurer interface {
	// ApplyConfig validates data and keeps it on STATE; dryRun validates
	// only. It fails with config.ErrAlreadyStored once a config was taken.
	ApplyConfig(ctx context.Context, data []byte, dryRun bool) error
}

// Maintenance is the API a node serves while it waits for its machine
// configuration, as Talos's maintenance mode does: TLS with a throwaway
// self-signed certificate and no client authentication, answering only
// Version and ApplyConfiguration. Every other call is refused. It exposes
// nothing secret: the node holds no secret yet, and it accepts exactly one
// configuration (whoever reaches the port first configures the node, which
// is why the lab's port is reachable only from the host that booted it).
type Maintenance struct {
	machine.UnimplementedMachineServiceServer

	Node Configurer
	Tag  string // Talos version the node stands in for
	Host string
}

// Version answers in maintenance mode too, so clients can pick their API.
func (m *Maintenance) Version(context.Context, *emptypb.Empty) (*machine.VersionResponse, error) {
	return &machine.VersionResponse{Messages: []*machine.Version{{
		Metadata: (&Server{Host: m.Host}).md(),
		Version:  &machine.VersionInfo{Tag: m.Tag, GoVersion: runtime.Version(), Os: runtime.GOOS, Arch: runtime.GOARCH},
		Platform: &machine.PlatformInfo{Name: "labos", Mode: "metal"},
	}}}, nil
}

// ApplyConfiguration takes the node's configuration. As in Talos's
// maintenance mode, REBOOT is served as NO_REBOOT (the node continues its
// boot with the config); STAGED and TRY make no sense without a running
// config and are refused.
func (m *Maintenance) ApplyConfiguration(ctx context.Context, req *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	mode := req.GetMode()

	switch mode {
	case machine.ApplyConfigurationRequest_AUTO, machine.ApplyConfigurationRequest_NO_REBOOT, machine.ApplyConfigurationRequest_REBOOT: //nolint:staticcheck // accepted for old clients, as Talos does
		mode = machine.ApplyConfigurationRequest_NO_REBOOT
	default:
		return nil, status.Errorf(codes.InvalidArgument, "apply configuration: mode %s is not supported in maintenance mode (use auto or no-reboot)", mode)
	}

	if err := m.Node.ApplyConfig(ctx, req.GetData(), req.GetDryRun()); err != nil {
		return nil, status.Errorf(StatusCodeOf(err), "apply configuration: %v", err)
	}

	details := "Applied configuration without a reboot"
	if req.GetDryRun() {
		details = "Dry run: the configuration is valid; nothing was applied"
	}

	return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{
		Metadata: (&Server{Host: m.Host}).md(), Mode: mode, ModeDetails: details,
	}}}, nil
}

// ErrInvalidConfig marks a config the node refused to take.
var ErrInvalidConfig = errors.New("invalid machine configuration")

// ErrConfigured marks a second configuration.
var ErrConfigured = errors.New("the node is already configured; it accepts one configuration, once, in maintenance mode")

// StatusCodeOf maps ApplyConfig's errors to gRPC codes.
func StatusCodeOf(err error) codes.Code {
	switch {
	case errors.Is(err, ErrInvalidConfig):
		return codes.InvalidArgument
	case errors.Is(err, ErrConfigured):
		return codes.FailedPrecondition
	default:
		return codes.Internal
	}
}

// MaintenanceTLS is a throwaway self-signed server certificate: Talos's
// maintenance clients connect with --insecure, so nothing is gained by a
// certificate that could be verified, and nothing needs to be kept.
func MaintenanceTLS(ips []net.IP, dns []string) (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("maintenance certificate: %w", err)
	}

	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("maintenance certificate: %w", err)
	}

	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "maintenance-service"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  ips,
		DNSNames:     dns,
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("maintenance certificate: %w", err)
	}

	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		ClientAuth:   tls.NoClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ServeMaintenance serves m on lis until ctx ends or stop is closed; it
// finishes calls in flight (the ApplyConfiguration reply goes out) first.
func ServeMaintenance(ctx context.Context, lis net.Listener, m *Maintenance, cfg *tls.Config, stop <-chan struct{}) error {
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)), grpc.MaxRecvMsgSize(maxConfigMsg))
	machine.RegisterMachineServiceServer(g, m)

	go func() {
		select {
		case <-ctx.Done():
		case <-stop:
		}

		g.GracefulStop()
	}()

	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving maintenance API: %w", err)
	}

	return nil
}

// maxConfigMsg leaves room for the largest config labos accepts
// (config.MaxSize) plus the request's framing.
const maxConfigMsg = 9 << 20
