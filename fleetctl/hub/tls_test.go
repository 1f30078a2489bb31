package hub_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/hub"
	"github.com/labfleet/labfleet/fleetctl/hub/simpeer"
)

// writeServerCert writes a self-signed certificate for 127.0.0.1 and its key.
func writeServerCert(t *testing.T) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "hub"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)

	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)

	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "hub.crt"), filepath.Join(dir, "hub.key")
	require.NoError(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))

	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)

	pool = x509.NewCertPool()
	pool.AddCert(cert)

	return certPath, keyPath, pool
}

// With tlsCert/tlsKey the API and the gRPC tunnel run over TLS (an https://
// SideroLink URL): the join token no longer crosses the network in clear.
func TestEnrollOverTLS(t *testing.T) {
	needRoot(t)

	certPath, keyPath, pool := writeServerCert(t)

	e := newEnv(t, func(c *hub.Config) { c.TLSCert, c.TLSKey = certPath, keyPath })
	ctx := context.Background()
	tok := e.token("berlin")

	p := e.peer(ctx, simpeer.Options{JoinToken: tok, UUID: "uuid-tls", UniqueToken: "t", Tunnel: true,
		TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
	e.linkUp(ctx, p)

	// A node dialling plain gRPC (grpc://) is not served.
	_, err := simpeer.Connect(ctx, simpeer.Options{API: e.cfg.APIListen, JoinToken: tok, UUID: "uuid-plain"})
	require.Error(t, err)
}

func TestConfigTLSPairRequired(t *testing.T) {
	cfg := hub.Defaults()
	cfg.TLSCert = "hub.crt"

	require.ErrorContains(t, cfg.Validate(), "hub config: tlsKey: tlsCert and tlsKey go together")
}
