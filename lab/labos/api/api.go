// Package api serves the Talos v1.14 API surface labfleet's tools and
// stock talosctl use against a lab node: MachineService (Version, Events,
// Upgrade, Rollback, Reboot, Shutdown, ServiceList, Read of the boot ID),
// ImageService (Pull, List), LifecycleService (Upgrade) and the COSI
// State service (Get, List, Watch), over gRPC with mutual TLS and Talos's
// role rules, so talosctl, machinery's client and fleetctl drive a lab node
// exactly as they drive a Talos node. Node state is read only through
// these calls.
package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/cosi-project/runtime/api/v1alpha1"
	cx509 "github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Node is what the API asks the running system to do.
type Node interface {
	// Status is what the node knows about itself (ServiceList reads its checks).
	Status() nodeapi.Status
	// Pull fetches and verifies an installer image and keeps it for Install.
	Pull(ctx context.Context, ref string) (Image, error)
	// Images lists the images Pull kept.
	Images() []Image
	// Install writes the UKI of an image Pull kept as the next boot entry;
	// it does not reboot (Talos's LifecycleService.Upgrade does not either).
	Install(ctx context.Context, ref string) (string, error)
	// Upgrade is the legacy one-call upgrade: pull, install and schedule a
	// reboot shortly after the reply has been sent; it returns a human
	// acknowledgement.
	Upgrade(ctx context.Context, ref string) (string, error)
	// Rollback pins the previous blessed entry and schedules a reboot.
	Rollback(ctx context.Context) (string, error)
	// Reboot schedules a reboot (or power off).
	Reboot(ctx context.Context, powerOff bool) error
}

// Image is an installer image the node pulled.
type Image struct {
	Name    string // the reference as pulled
	Digest  string
	Size    int64
	Created time.Time
}

// Server implements the machine, image, lifecycle and COSI state services.
type Server struct {
	machine.UnimplementedMachineServiceServer

	Node    Node
	Runtime *Runtime
	// Tag is the Talos version labos stands in for (VersionInfo.Tag);
	// ImageVersion is the image's own version, served as VersionInfo.Sha
	// (see lab/labos/README.md for why that field).
	Tag          string
	ImageVersion string
	Host         string // hostname in response metadata
	// BootIDFile is where the kernel's boot ID is read (tests point it
	// elsewhere); Read serves it at BootIDPath.
	BootIDFile string

	shutdown context.Context //nolint:containedctx // Serve's context: ends event streams
}

// TalosTag is the Talos release labos stands in for: Version reports it,
// so clients choose the API they would use on that release.
const TalosTag = "v1.14.1"

// BootIDPath is the one file Read serves: talosctl reads it before and
// after a reboot to see that the node really rebooted.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

func (s *Server) md() *common.Metadata { return &common.Metadata{Hostname: s.Host} }

// TLSConfig issues a server certificate from the machine CA (valid for ips
// and dns names) and requires client certificates chaining to that CA.
func TLSConfig(caCrt, caKey []byte, ips []net.IP, dns []string) (*tls.Config, error) {
	return ReissuingTLSConfig(caCrt, caKey, func() ([]net.IP, []string) { return ips, dns })
}

// ReissuingTLSConfig is TLSConfig for names that change while the API
// serves: names is asked at each handshake and a new certificate is issued
// when the set changed. Talos reissues its API certificate the same way
// when an address appears, e.g. the SideroLink tunnel address, which
// comes up whenever the hub answers, before or after the API starts.
func ReissuingTLSConfig(caCrt, caKey []byte, names func() ([]net.IP, []string)) (*tls.Config, error) {
	ca, err := cx509.NewCertificateAuthorityFromCertificateAndKey(&cx509.PEMEncodedCertificateAndKey{Crt: caCrt, Key: caKey})
	if err != nil {
		return nil, fmt.Errorf("loading machine CA: %w", err)
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caCrt) {
		return nil, errors.New("loading machine CA: no certificate in PEM")
	}

	issue := func(ips []net.IP, dns []string) (*tls.Certificate, error) {
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

		return kp.Certificate, nil
	}

	key := func(ips []net.IP, dns []string) string { return fmt.Sprint(ips, dns) }

	var (
		mu      sync.Mutex
		current string
		cert    *tls.Certificate
	)

	ips, dns := names()
	if cert, err = issue(ips, dns); err != nil {
		return nil, err
	}

	current = key(ips, dns)

	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			ips, dns := names()
			k := key(ips, dns)

			mu.Lock()
			defer mu.Unlock()

			if k != current {
				c, err := issue(ips, dns)
				if err != nil {
					return nil, err
				}

				cert, current = c, k
			}

			return cert, nil
		},
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  pool,
		MinVersion: tls.VersionTLS13,
	}, nil
}

// Serve serves s on lis until ctx ends.
func Serve(ctx context.Context, lis net.Listener, s *Server, cfg *tls.Config) error {
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)),
		grpc.ChainUnaryInterceptor(unaryAuthz), grpc.ChainStreamInterceptor(streamAuthz))
	machine.RegisterMachineServiceServer(g, s)
	machine.RegisterImageServiceServer(g, &imageService{s: s})
	machine.RegisterLifecycleServiceServer(g, &lifecycleService{s: s})
	v1alpha1.RegisterStateServer(g, s.Runtime.stateServer())

	// event streams never end by themselves; they end with ctx, as
	// machined's end on shutdown, so the graceful stop does not wait forever
	s.shutdown = ctx

	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()

	if err := g.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving machine API: %w", err)
	}

	return nil
}
