package site_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"testing"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/site"
)

func TestGenerateWriteAndLoad(t *testing.T) {
	dir := t.TempDir()

	creds, err := site.Generate("ber-1-a", []string{"10.0.0.10"})
	require.NoError(t, err)
	require.NoError(t, creds.Write(dir, false))

	for _, name := range []string{site.SecretsFile, site.TalosconfigFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), name)
	}

	b, err := secrets.LoadBundle(filepath.Join(dir, site.SecretsFile))
	require.NoError(t, err)
	assert.Equal(t, creds.Bundle.Certs.OS.Crt, b.Certs.OS.Crt, "bundle round-trips")

	cfg, err := clientconfig.Open(filepath.Join(dir, site.TalosconfigFile))
	require.NoError(t, err)
	assert.Equal(t, "ber-1-a", cfg.Context)
	assert.Equal(t, []string{"10.0.0.10"}, cfg.Contexts["ber-1-a"].Endpoints)

	require.ErrorContains(t, creds.Write(dir, false), "already exists")
	require.NoError(t, creds.Write(dir, true))
}

// TestServerTLSAcceptsOnlyTheClusterAdmin completes real TLS handshakes.
func TestServerTLSAcceptsOnlyTheClusterAdmin(t *testing.T) {
	creds, err := site.Generate("a", []string{"127.0.0.1"})
	require.NoError(t, err)

	srvCfg, err := site.ServerTLS(creds.Bundle, []net.IP{net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)

	lis, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	require.NoError(t, err)

	defer lis.Close()

	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}

			c.(*tls.Conn).Handshake() //nolint:errcheck
			c.Write([]byte("x"))      //nolint:errcheck
			c.Close()
		}
	}()

	clientCfg := func(c *site.Credentials) *tls.Config {
		ctx := c.Talosconfig.Contexts[c.Talosconfig.Context]
		crt, _ := base64.StdEncoding.DecodeString(ctx.Crt)
		key, _ := base64.StdEncoding.DecodeString(ctx.Key)
		ca, _ := base64.StdEncoding.DecodeString(ctx.CA)

		pair, err := tls.X509KeyPair(crt, key)
		require.NoError(t, err)

		pool := x509.NewCertPool()
		require.True(t, pool.AppendCertsFromPEM(ca))

		return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "127.0.0.1"}
	}

	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", lis.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()

		buf := make([]byte, 1)
		_, err = c.Read(buf)

		return err
	}

	require.NoError(t, dial(clientCfg(creds)), "the cluster's own talosconfig")

	other, err := site.Generate("b", nil)
	require.NoError(t, err)

	require.Error(t, dial(clientCfg(other)), "another cluster's CA must not verify")

	mixed := clientCfg(other)
	mixed.RootCAs = clientCfg(creds).RootCAs
	require.Error(t, dial(mixed), "a client certificate from another CA must be refused by the server")
}
