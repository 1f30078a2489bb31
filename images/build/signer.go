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
	"net"
	"os"
	"path/filepath"

	"github.com/siderolabs/talos/pkg/imager/profile"
	"github.com/siderolabs/talos/pkg/machinery/api/signer"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/labfleet/labfleet/images/keys"
)

// imagerSigners returns the imager's UKI and PCR signers. Talos's imager
// reads only PKCS#1 keys from a path; a PKCS#8 key is instead held in
// memory and served to the imager over Talos's own SignerService on a unix
// socket in the build's private work dir, so no converted copy of a
// private key is ever written (docs/contracts.md: keys directory).
// stop shuts the servers down.
func (b *builder) imagerSigners() (uki profile.SigningKeyAndCertificate, pcr profile.SigningKey, stop func(), err error) {
	var servers []*grpc.Server

	stop = func() {
		for _, s := range servers {
			s.Stop()
		}
	}

	defer func() {
		if err != nil {
			stop()
		}
	}()

	serve := func(name string, key *rsa.PrivateKey, certPEM []byte) (string, error) {
		sock := filepath.Join(b.work, "signer-"+name+".sock")

		lis, err := net.Listen("unix", sock)
		if err != nil {
			return "", fmt.Errorf("starting in-memory %s signer: %w", name, err)
		}

		srv := grpc.NewServer()
		signer.RegisterSignerServiceServer(srv, &memorySigner{key: key, certPEM: certPEM})
		servers = append(servers, srv)

		go srv.Serve(lis) //nolint:errcheck

		return "unix://" + sock, nil
	}

	ukiKey, pkcs1, err := keys.ReadPrivateKey(b.keys.UKISigningKey)
	if err != nil {
		return uki, pcr, nil, fmt.Errorf("UKI signing key: %w", err)
	}

	if pkcs1 {
		uki = profile.SigningKeyAndCertificate{KeyPath: b.keys.UKISigningKey, CertPath: b.keys.UKISigningCert}
	} else {
		certPEM, err := os.ReadFile(b.keys.UKISigningCert)
		if err != nil {
			return uki, pcr, nil, fmt.Errorf("reading UKI signing certificate: %w", err)
		}

		if uki.SignerAddress, err = serve("uki", ukiKey, certPEM); err != nil {
			return uki, pcr, nil, err
		}
	}

	pcrKey, pkcs1, err := keys.ReadPrivateKey(b.keys.PCRSigningKey)
	if err != nil {
		return uki, pcr, nil, fmt.Errorf("PCR signing key: %w", err)
	}

	if pkcs1 {
		pcr = profile.SigningKey{KeyPath: b.keys.PCRSigningKey}
	} else if pcr.SignerAddress, err = serve("pcr", pcrKey, nil); err != nil {
		return uki, pcr, nil, err
	}

	return uki, pcr, stop, nil
}

// memorySigner is a SignerService over a key held in memory.
type memorySigner struct {
	signer.UnimplementedSignerServiceServer

	key     *rsa.PrivateKey
	certPEM []byte
}

func (s *memorySigner) GetCertificate(context.Context, *emptypb.Empty) (*signer.CertificateResponse, error) {
	if s.certPEM == nil {
		return nil, errors.New("this signer has no certificate")
	}

	return &signer.CertificateResponse{CertPem: s.certPEM}, nil
}

func (s *memorySigner) GetPublicKey(context.Context, *emptypb.Empty) (*signer.PublicKeyResponse, error) {
	der, err := x509.MarshalPKIXPublicKey(&s.key.PublicKey)
	if err != nil {
		return nil, err
	}

	return &signer.PublicKeyResponse{PubKeyPem: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}, nil
}

func (s *memorySigner) Sign(_ context.Context, req *signer.SignRequest) (*signer.SignResponse, error) {
	var h crypto.Hash

	switch req.Hash { //nolint:exhaustive
	case signer.Hash_HASH_SHA256:
		h = crypto.SHA256
	case signer.Hash_HASH_SHA384:
		h = crypto.SHA384
	case signer.Hash_HASH_SHA512:
		h = crypto.SHA512
	default:
		return nil, fmt.Errorf("unsupported hash %v", req.Hash)
	}

	var (
		sig []byte
		err error
	)

	if req.Scheme == signer.Scheme_SCHEME_RSA_PSS {
		sig, err = rsa.SignPSS(rand.Reader, s.key, h, req.Digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	} else {
		sig, err = rsa.SignPKCS1v15(rand.Reader, s.key, h, req.Digest)
	}

	if err != nil {
		return nil, err
	}

	return &signer.SignResponse{Signature: sig}, nil
}
