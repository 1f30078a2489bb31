package api_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/api"
)

// A name that appears while the API serves (the SideroLink tunnel address
// comes up whenever the hub answers) is in the certificate of the next
// handshake: a client verifying the node at that address succeeds without
// a reboot.
func TestCertificateFollowsNewAddress(t *testing.T) {
	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), nil)
	require.NoError(t, err)

	var tunnel atomic.Bool

	tunnelIP := net.ParseIP("fdae:1::2")
	names := func() ([]net.IP, []string) {
		ips := []net.IP{net.ParseIP("127.0.0.1")}
		if tunnel.Load() {
			ips = append(ips, tunnelIP)
		}

		return ips, []string{"localhost"}
	}

	srvCfg, err := api.ReissuingTLSConfig(bundle.Certs.OS.Crt, bundle.Certs.OS.Key, names)
	require.NoError(t, err)

	srvCfg.ClientAuth = tls.NoClientCert // the server name is what is checked here

	lis, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	require.NoError(t, err)
	t.Cleanup(func() { lis.Close() })

	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}

			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()

	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(bundle.Certs.OS.Crt))

	dial := func() error {
		c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: pool, ServerName: tunnelIP.String(), MinVersion: tls.VersionTLS13})
		if err == nil {
			c.Close()
		}

		return err
	}

	err = dial()
	require.ErrorContains(t, err, "certificate is valid for 127.0.0.1, not fdae:1::2", "no link yet: the tunnel address is not a name of the node")

	tunnel.Store(true)
	require.NoError(t, dial(), "the link is up: the next handshake names the tunnel address")
}
