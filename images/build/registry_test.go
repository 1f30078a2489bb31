package build_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/build"
	"github.com/labfleet/labfleet/images/keys"
	"github.com/labfleet/labfleet/images/spec"
)

const registryBinary = "/usr/bin/docker-registry"

// realRegistry is Debian's docker-registry (the CNCF distribution registry)
// on 127.0.0.1, TLS with a test CA, htpasswd authentication.
type realRegistry struct {
	host      string
	transport *http.Transport // trusts the test CA
	user, pw  string
}

func startRegistry(t *testing.T) *realRegistry {
	t.Helper()

	if _, err := os.Stat(registryBinary); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing: hack/install-deps.sh installs Debian's docker-registry", registryBinary)
		}

		t.Skipf("%s missing: install Debian package docker-registry (hack/install-deps.sh) to run the registry tests", registryBinary)
	}

	dir := t.TempDir()

	// A CA and a server certificate for 127.0.0.1.
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "labfleet test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &srvKey.PublicKey, caKey)
	require.NoError(t, err)

	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	require.NoError(t, err)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o600))

		return p
	}
	certFile := write("server.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}))
	keyFile := write("server-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))

	user, pw := "release", "s3cret-"+fmt.Sprint(time.Now().UnixNano())
	hash, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	require.NoError(t, err)
	htpasswd := write("htpasswd", []byte(user+":"+string(hash)+"\n"))

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	host := l.Addr().String()
	require.NoError(t, l.Close())

	config := write("config.yml", []byte(fmt.Sprintf(`version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: %s}
http:
  addr: %s
  tls: {certificate: %s, key: %s}
auth:
  htpasswd: {realm: labfleet-test, path: %s}
`, filepath.Join(dir, "data"), host, certFile, keyFile, htpasswd)))

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, registryBinary, "serve", config)
	out, err := os.Create(filepath.Join(dir, "registry.log"))
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cancel()
		cmd.Wait() //nolint:errcheck
		out.Close()
	})

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}

	client := &http.Client{Transport: tr, Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)

	for {
		resp, err := client.Get("https://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()

			if resp.StatusCode == http.StatusUnauthorized {
				break
			}
		}

		if time.Now().After(deadline) {
			log, _ := os.ReadFile(out.Name())
			t.Fatalf("registry on %s not ready: %v\n%s", host, err, log)
		}

		time.Sleep(100 * time.Millisecond)
	}

	return &realRegistry{host: host, transport: tr, user: user, pw: pw}
}

// dockerConfig points DOCKER_CONFIG at a folder whose config.json holds
// credentials for the registry, as `docker login` writes them.
func (r *realRegistry) dockerConfig(t *testing.T, user, pw string) {
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pw))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"),
		[]byte(fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, r.host, auth)), 0o600))
	t.Setenv("DOCKER_CONFIG", dir)
}

// TestRegistryWithAuthAndTLS pulls the base from and pushes the installer
// to a real registry that requires credentials and TLS, credentials coming
// only from the Docker config, then pulls the installer back.
func TestRegistryWithAuthAndTLS(t *testing.T) {
	reg := startRegistry(t)
	reg.dockerConfig(t, reg.user, reg.pw)

	assets := labAssets(t)
	img := talosLayoutImage(t, assets, []byte("not a real initramfs"))
	digest, err := img.Digest()
	require.NoError(t, err)

	baseRef := reg.host + "/siderolabs/imager:v1.14.1"
	tag, err := name.NewTag(baseRef)
	require.NoError(t, err)
	require.NoError(t, remote.Write(tag, img, remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithTransport(reg.transport)))

	ib := talosInstallerBaseImage(t)
	ibDigest, err := ib.Digest()
	require.NoError(t, err)

	ibRef := reg.host + "/siderolabs/installer-base:v1.14.1"
	ibTag, err := name.NewTag(ibRef)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ibTag, ib, remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithTransport(reg.transport)))

	root := t.TempDir()
	_, err = keys.Generate(filepath.Join(root, "keys"), keys.GenerateOptions{})
	require.NoError(t, err)

	def, err := spec.Parse("edge.yaml", []byte(`
name: edge
version: 1.0.0
talosVersion: v1.14.1
base:
  image: `+baseRef+`
  digest: `+digest.String()+`
keys: keys
outputs: [uki, installer]
installer:
  repository: `+reg.host+`/labfleet/edge-installer
  base:
    image: `+ibRef+`
    digest: `+ibDigest.String()+`
`))
	require.NoError(t, err)

	opts := build.Options{
		Root: root, Baker: staticBaker{config: bootstrapConfig}, Force: true,
		ToolsPath: filepath.Join(assets, "tools", "bin"),
		Registry:  base.Registry{Transport: reg.transport},
	}

	res, err := build.Build(context.Background(), def, opts)
	require.NoError(t, err)

	inst, ok := res.Record.Output("installer")
	require.True(t, ok)
	require.Equal(t, reg.host+"/labfleet/edge-installer@sha256:"+inst.SHA256, inst.Ref)

	// Pull it back, as a node's upgrade would.
	ref, err := name.ParseReference(inst.Ref)
	require.NoError(t, err)
	pulled, err := remote.Image(ref, remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithTransport(reg.transport))
	require.NoError(t, err)
	pd, err := pulled.Digest()
	require.NoError(t, err)
	require.Equal(t, "sha256:"+inst.SHA256, pd.String())

	t.Run("wrong credentials are refused", func(t *testing.T) {
		reg.dockerConfig(t, reg.user, "wrong")

		_, err := build.Build(context.Background(), def, opts)
		require.Error(t, err)
		require.Contains(t, err.Error(), "UNAUTHORIZED")
	})

	t.Run("TLS is verified by default, no plain HTTP fallback", func(t *testing.T) {
		o := opts
		o.Registry = base.Registry{} // system roots: the test CA is unknown

		_, err := build.Build(context.Background(), def, o)
		require.Error(t, err)
		require.Contains(t, err.Error(), "certificate")
	})
}
