package overview

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) testCA {
	t.Helper()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)

	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)

	return testCA{cert: cert, key: key}
}

// issue returns PEM cert and key files signed by ca.
func (ca testCA) issue(t *testing.T, dir, cn string, server bool) (string, string) {
	t.Helper()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)

	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)

	c, k := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	require.NoError(t, os.WriteFile(c, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))

	return c, k
}

func (ca testCA) pemFile(t *testing.T, dir string) string {
	p := filepath.Join(dir, ca.cert.Subject.CommonName+"-ca.crt")
	require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600))

	return p
}

// A client certificate from the configured CA logs its user in with its
// role; one from another CA, or with an unknown name, gets nothing.
func TestClientCertificateLogin(t *testing.T) {
	dir := t.TempDir()
	ca, other := newCA(t, "operators"), newCA(t, "elsewhere")
	srvCert, srvKey := ca.issue(t, dir, "server", true)
	carolCert, carolKey := ca.issue(t, dir, "carol", false)
	daveCert, daveKey := ca.issue(t, dir, "dave", false)
	mallory := filepath.Join(t.TempDir())
	malCert, malKey := other.issue(t, mallory, "carol", false)

	cfg := testConfig()
	cfg.TLS = &TLSConfig{Cert: srvCert, Key: srvKey, ClientCA: ca.pemFile(t, dir)}
	cfg.Users = append(cfg.Users, User{Name: "carol", Role: RoleOperator, CertCommonName: "carol"})
	require.NoError(t, cfg.Validate())

	f := newFixture(t, smallFleet(false), func(o *Options) { o.Config = cfg; o.Secure = true })

	tc, err := ServerTLS(cfg.TLS)
	require.NoError(t, err)

	ts := httptest.NewUnstartedServer(f.srv)
	ts.TLS = tc
	ts.StartTLS()
	defer ts.Close()

	client := func(cert, key string) *http.Client {
		roots := x509.NewCertPool()
		roots.AddCert(ca.cert)

		tlsc := &tls.Config{RootCAs: roots}
		if cert != "" {
			kp, err := tls.LoadX509KeyPair(cert, key)
			require.NoError(t, err)

			tlsc.Certificates = []tls.Certificate{kp}
		}

		return &http.Client{Transport: &http.Transport{TLSClientConfig: tlsc}}
	}

	me := func(c *http.Client) (int, string) {
		resp, err := c.Get(ts.URL + "/api/v1/me")
		require.NoError(t, err)
		defer resp.Body.Close()

		b := make([]byte, 512)
		n, _ := resp.Body.Read(b)

		return resp.StatusCode, string(b[:n])
	}

	code, body := me(client(carolCert, carolKey))
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"name":"carol","role":"operator","method":"certificate"}`, body)

	code, _ = me(client(daveCert, daveKey))
	require.Equal(t, http.StatusUnauthorized, code, "a valid certificate whose name no user has")

	code, _ = me(client("", ""))
	require.Equal(t, http.StatusUnauthorized, code, "no certificate: token login still possible")

	// A certificate with the right name from another CA: Go's client does not
	// even offer it (the server names its CA); either way, no identity.
	if resp, err := client(malCert, malKey).Get(ts.URL + "/api/v1/me"); err == nil {
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "carol's name from a foreign CA")
	}

	// Offered anyway (a client that ignores the CA list), the handshake fails.
	kp, err := tls.LoadX509KeyPair(malCert, malKey)
	require.NoError(t, err)

	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)

	forced := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }}}}
	_, err = forced.Get(ts.URL + "/api/v1/me")
	require.ErrorContains(t, err, "certificate", "foreign CA refused in the handshake")

	// Carol's pause is audited under her certificate identity.
	req, _ := http.NewRequest("POST", ts.URL+"/api/v1/rollouts/latest/pause", nil)
	resp, err := client(carolCert, carolKey).Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	audit, err := f.st.Audit(t.Context(), f.id, 0)
	require.NoError(t, err)
	require.True(t, hasAudit(audit, "rollout.pause", "carol (overview, certificate, operator)"))
}
