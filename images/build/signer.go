package build

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/signer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/labfleet/labfleet/images/keys"
)

// signing is a build's signers. Every signature of a build goes through
// Talos's SignerService (machinery api/signer) on unix sockets in the
// build's private work dir: the imager signs the UKI and its PCR policy
// through the addresses (profile signerAddress), and the builder re-signs
// the UKI and signs systemd-boot through a client of the same service.
// So a key held in memory (a PEM file read once), in a PKCS#11 token or in
// any other external signer takes the same path, and no key or converted
// copy of one is ever written (docs/contracts.md: keys directory).
type signing struct {
	ukiAddr, pcrAddr string
	servers          []*grpc.Server
	closeClient      func()
	closeKeys        func()
	dir              *os.File // the work dir, held open: the sockets are named through it

	// uki is a client of the UKI signer service, for the builder's own
	// Authenticode signatures.
	uki     crypto.Signer
	ukiCert *x509.Certificate
}

// keySource opens the private keys of a keys set: from the PEM files, or
// from the PKCS#11 token the set names (pkcs11.json).
type keySource struct {
	uki, pcr crypto.Signer
	close    func()
}

func openKeys(ks *keys.Set, pin string) (*keySource, error) {
	if ks.PKCS11 != nil {
		return openPKCS11Keys(ks, pin)
	}

	uki, _, err := keys.ReadPrivateKey(ks.UKISigningKey)
	if err != nil {
		return nil, fmt.Errorf("UKI signing key: %w", err)
	}

	pcr, _, err := keys.ReadPrivateKey(ks.PCRSigningKey)
	if err != nil {
		return nil, fmt.Errorf("PCR signing key: %w", err)
	}

	return &keySource{uki: uki, pcr: pcr, close: func() {}}, nil
}

// startSigning serves the keys set's UKI and PCR keys over SignerService.
func (b *builder) startSigning(ctx context.Context) (err error) {
	s := &signing{}
	b.signing = s

	src, err := openKeys(b.keys, b.opts.PKCS11PIN)
	if err != nil {
		return err
	}

	s.closeKeys = src.close

	certPEM, err := os.ReadFile(b.keys.UKISigningCert)
	if err != nil {
		return fmt.Errorf("reading UKI signing certificate: %w", err)
	}

	// A unix socket path holds at most 107 bytes, and the work dir can be
	// deeper (TMPDIR). The sockets are named through /proc/self/fd/N of the
	// work dir instead: short, and as private as the folder itself (0700),
	// unlike an abstract socket any local user could reach. The imager runs
	// in this process, so the name resolves for it too.
	dir, err := os.Open(b.work)
	if err != nil {
		return fmt.Errorf("opening work dir for the signer sockets: %w", err)
	}

	s.dir = dir

	serve := func(name string, key crypto.Signer, certPEM []byte) (string, error) {
		sock := fmt.Sprintf("/proc/self/fd/%d/signer-%s.sock", dir.Fd(), name)

		lis, err := net.Listen("unix", sock)
		if err != nil {
			return "", fmt.Errorf("starting the %s signer: %w", name, err)
		}

		srv := grpc.NewServer()
		signer.RegisterSignerServiceServer(srv, &signerService{key: key, certPEM: certPEM})
		s.servers = append(s.servers, srv)

		go srv.Serve(lis) //nolint:errcheck

		return "unix://" + sock, nil
	}

	if s.ukiAddr, err = serve("uki", src.uki, certPEM); err != nil {
		return err
	}

	if s.pcrAddr, err = serve("pcr", src.pcr, nil); err != nil {
		return err
	}

	client, cert, closeClient, err := dialSigner(ctx, s.ukiAddr)
	if err != nil {
		return err
	}

	s.closeClient = closeClient
	s.uki, s.ukiCert = client, cert

	return nil
}

// stop closes the client, shuts the services down and closes the key
// source (the token session) last, after everything using it.
func (s *signing) stop() {
	if s == nil {
		return
	}

	if s.closeClient != nil {
		s.closeClient()
	}

	for _, srv := range s.servers {
		srv.Stop()
	}

	if s.closeKeys != nil {
		s.closeKeys()
	}

	if s.dir != nil {
		s.dir.Close() //nolint:errcheck
	}
}

// signingTime is the signingTime of every Authenticode signature of the
// build: SOURCE_DATE_EPOCH, so two builds of the same inputs are identical.
func (b *builder) signingTime() time.Time { return time.Unix(b.epoch, 0).UTC() }

// signPE Authenticode-signs a PE binary (systemd-boot) with the UKI signing key.
func (b *builder) signPE(src, dst string) error {
	if b.signing == nil || b.signing.uki == nil {
		return errors.New("signing PE: no signer started")
	}

	return signPEFile(src, dst, b.signing.uki, b.signing.ukiCert, b.signingTime())
}

// signerService is a SignerService over a crypto.Signer: an RSA key held
// in memory or a PKCS#11 token's key.
type signerService struct {
	signer.UnimplementedSignerServiceServer

	key     crypto.Signer
	certPEM []byte
}

func (s *signerService) GetCertificate(context.Context, *emptypb.Empty) (*signer.CertificateResponse, error) {
	if s.certPEM == nil {
		return nil, errors.New("this signer has no certificate")
	}

	return &signer.CertificateResponse{CertPem: s.certPEM}, nil
}

func (s *signerService) GetPublicKey(context.Context, *emptypb.Empty) (*signer.PublicKeyResponse, error) {
	der, err := x509.MarshalPKIXPublicKey(s.key.Public())
	if err != nil {
		return nil, err
	}

	return &signer.PublicKeyResponse{PubKeyPem: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}, nil
}

func hashOf(h signer.Hash) (crypto.Hash, error) {
	switch h { //nolint:exhaustive
	case signer.Hash_HASH_SHA256:
		return crypto.SHA256, nil
	case signer.Hash_HASH_SHA384:
		return crypto.SHA384, nil
	case signer.Hash_HASH_SHA512:
		return crypto.SHA512, nil
	default:
		return 0, fmt.Errorf("unsupported hash %v", h)
	}
}

func (s *signerService) Sign(_ context.Context, req *signer.SignRequest) (*signer.SignResponse, error) {
	h, err := hashOf(req.Hash)
	if err != nil {
		return nil, err
	}

	var opts crypto.SignerOpts = h
	if req.Scheme == signer.Scheme_SCHEME_RSA_PSS {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
	}

	sig, err := s.key.Sign(rand.Reader, req.Digest, opts)
	if err != nil {
		return nil, err
	}

	return &signer.SignResponse{Signature: sig}, nil
}

// remoteSigner is a crypto.Signer over a SignerService (PKCS#1 v1.5 and PSS).
type remoteSigner struct {
	client signer.SignerServiceClient
	pub    crypto.PublicKey
}

func (r *remoteSigner) Public() crypto.PublicKey { return r.pub }

func (r *remoteSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var h signer.Hash

	switch opts.HashFunc() { //nolint:exhaustive
	case crypto.SHA256:
		h = signer.Hash_HASH_SHA256
	case crypto.SHA384:
		h = signer.Hash_HASH_SHA384
	case crypto.SHA512:
		h = signer.Hash_HASH_SHA512
	default:
		return nil, fmt.Errorf("signer service: unsupported hash %v", opts.HashFunc())
	}

	scheme := signer.Scheme_SCHEME_RSA_PKCS1V15
	if _, ok := opts.(*rsa.PSSOptions); ok {
		scheme = signer.Scheme_SCHEME_RSA_PSS
	}

	resp, err := r.client.Sign(context.Background(), &signer.SignRequest{Digest: digest, Hash: h, Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("signer service: %w", err)
	}

	return resp.Signature, nil
}

// dialSigner connects to a SignerService with a certificate (unix://path).
func dialSigner(ctx context.Context, addr string) (crypto.Signer, *x509.Certificate, func(), error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connecting to signer %s: %w", addr, err)
	}

	client := signer.NewSignerServiceClient(conn)

	resp, err := client.GetCertificate(ctx, &emptypb.Empty{})
	if err != nil {
		conn.Close() //nolint:errcheck

		return nil, nil, nil, fmt.Errorf("signer %s: certificate: %w", addr, err)
	}

	blk, _ := pem.Decode(resp.CertPem)
	if blk == nil {
		conn.Close() //nolint:errcheck

		return nil, nil, nil, fmt.Errorf("signer %s: certificate is not PEM", addr)
	}

	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		conn.Close() //nolint:errcheck

		return nil, nil, nil, fmt.Errorf("signer %s: certificate: %w", addr, err)
	}

	return &remoteSigner{client: client, pub: cert.PublicKey}, cert, func() { conn.Close() }, nil //nolint:errcheck
}
