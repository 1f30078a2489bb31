// Package site creates a cluster's credentials with Talos's machinery: the
// secrets bundle (machine CA and the rest) and a talosconfig holding an
// os:admin client certificate signed by that CA, as `talosctl gen secrets`
// and `talosctl gen config` would.
package site

import (
	"crypto/tls"
	stdx509 "crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/siderolabs/crypto/x509"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"gopkg.in/yaml.v3"
)

// File names written by Init (the names talosctl uses).
const (
	SecretsFile     = "secrets.yaml"
	TalosconfigFile = "talosconfig"
)

// Credentials are a cluster's generated secrets and client configuration.
type Credentials struct {
	Bundle      *secrets.Bundle
	Talosconfig *clientconfig.Config
}

// Generate creates a fresh secrets bundle and a talosconfig for cluster with
// the given endpoints.
func Generate(cluster string, endpoints []string) (*Credentials, error) {
	// ECDSA service-account key: RSA costs hundreds of milliseconds per
	// bundle, which matters when a simulator makes many.
	bundle, err := secrets.NewBundle(secrets.NewClock(), config.TalosVersionCurrent, secrets.WithECDSAServiceAccountKey())
	if err != nil {
		return nil, fmt.Errorf("generating secrets bundle: %w", err)
	}

	return FromBundle(bundle, cluster, endpoints)
}

// FromBundle issues a talosconfig (os:admin) from an existing bundle.
func FromBundle(bundle *secrets.Bundle, cluster string, endpoints []string) (*Credentials, error) {
	cert, err := bundle.GenerateTalosAPIClientCertificate(role.MakeSet(role.Admin))
	if err != nil {
		return nil, fmt.Errorf("issuing client certificate: %w", err)
	}

	cfg := clientconfig.NewConfig(cluster, endpoints, bundle.Certs.OS.Crt, cert)

	return &Credentials{Bundle: bundle, Talosconfig: cfg}, nil
}

// Write stores secrets.yaml and talosconfig in dir (mode 0600). It refuses to
// overwrite existing files unless force is set: replacing a cluster's CA
// locks fleetctl out of it.
func (c *Credentials) Write(dir string, force bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}

	for _, name := range []string{SecretsFile, TalosconfigFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil && !force {
			return fmt.Errorf("%s already exists (use --force to replace a cluster's credentials)", filepath.Join(dir, name))
		}
	}

	data, err := yaml.Marshal(c.Bundle)
	if err != nil {
		return fmt.Errorf("encoding secrets bundle: %w", err)
	}

	if err := os.WriteFile(filepath.Join(dir, SecretsFile), data, 0o600); err != nil {
		return fmt.Errorf("writing secrets bundle: %w", err)
	}

	tc, err := c.Talosconfig.Bytes()
	if err != nil {
		return fmt.Errorf("encoding talosconfig: %w", err)
	}

	if err := os.WriteFile(filepath.Join(dir, TalosconfigFile), tc, 0o600); err != nil {
		return fmt.Errorf("writing talosconfig: %w", err)
	}

	return nil
}

// ServerTLS returns a TLS configuration for a machine API server: a server
// certificate for ips signed by the bundle's machine CA, and client
// certificates required and verified against the same CA (what apid does).
func ServerTLS(bundle *secrets.Bundle, ips []net.IP) (*tls.Config, error) {
	if bundle.Certs == nil || bundle.Certs.OS == nil {
		return nil, errors.New("secrets bundle has no machine (OS) CA")
	}

	ca, err := x509.NewCertificateAuthorityFromCertificateAndKey(bundle.Certs.OS)
	if err != nil {
		return nil, fmt.Errorf("loading machine CA: %w", err)
	}

	kp, err := x509.NewKeyPair(ca,
		x509.CommonName("labfleet-node"),
		x509.IPAddresses(ips),
		x509.DNSNames([]string{"localhost"}),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}),
	)
	if err != nil {
		return nil, fmt.Errorf("issuing server certificate: %w", err)
	}

	pool := stdx509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle.Certs.OS.Crt) {
		return nil, errors.New("machine CA certificate is not valid PEM")
	}

	return &tls.Config{
		Certificates: []tls.Certificate{*kp.Certificate},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
