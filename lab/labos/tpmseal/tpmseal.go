// Package tpmseal seals and unseals a disk key with Talos's TPM policy:
// PolicyAuthorize with the UKI's PCR-signing public key over PCR 11, then
// PolicyPCR over PCR 7 (Secure Boot state). Any UKI whose .pcrsig is signed
// with the same key unlocks the disk, so upgrades need no re-sealing, while
// a change of the Secure Boot databases (PCR 7) breaks the unlock.
package tpmseal

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// PCR numbers used by the policy.
const (
	UKIPCR             = 11 // measured UKI + boot phases, authorized by signature
	SecureBootStatePCR = 7  // Secure Boot state and databases, bound directly
)

// EncryptionVersion marks blobs whose PCRs field lists the directly bound
// PCRs (Talos 1.12+ semantics: PubKeyPCRs = [11], PCRs = [7]).
const EncryptionVersion = "1"

// Sealed is a sealed key and what is needed to unseal it.
type Sealed struct {
	Private           []byte // TPM2B_PRIVATE of the sealed object
	Public            []byte // TPM2B_PUBLIC of the sealed object
	KeyName           []byte // TPM2B_NAME of the SRK it was sealed under
	PolicyDigest      []byte // the object's authPolicy
	PCRs              []int  // PCRs bound by PolicyPCR
	PubKeyPCRs        []int  // PCRs authorized by the signing key
	EncryptionVersion string
	Alg               string
}

// Sentinel errors callers report as an unlock failure reason.
var (
	ErrNoMatchingSignature = errors.New("no signed policy matches the current PCR 11 value")
	ErrKeyFingerprint      = errors.New("signature was made by a different PCR signing key")
	// ErrPolicyMismatch: PCR 7 changed (Secure Boot databases or state) or
	// the UKI's PCR signing key is not the one the key was sealed to.
	ErrPolicyMismatch = errors.New("sealing policy mismatch: Secure Boot state (PCR 7) or PCR signing key changed")
	ErrSRKMismatch    = errors.New("storage root key differs (other TPM or TPM cleared)")
	// ErrWeakSeal: the sealed object could be unsealed without the full
	// policy (userWithAuth set, PCR 7 not bound, authPolicy not the one
	// recorded, not fixed to this TPM). Seal refuses to produce one and
	// Unseal refuses to use one.
	ErrWeakSeal = errors.New("sealed object is weaker than the sealing policy")
	// ErrTPMUnreachable: a command could not be sent to the TPM or its
	// answer read (no device, closed transport, swtpm gone). It is never a
	// policy refusal: the TPM did not answer at all.
	ErrTPMUnreachable = errors.New("TPM not reachable")
)

// reachable marks transport failures with ErrTPMUnreachable, so callers
// can tell "the TPM said no" (a TPM response code) from "no TPM answered".
type reachable struct{ t transport.TPM }

func (r reachable) Send(cmd []byte) ([]byte, error) {
	rsp, err := r.t.Send(cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTPMUnreachable, err)
	}

	return rsp, nil
}

func guard(t transport.TPM) (transport.TPM, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: no TPM transport", ErrTPMUnreachable)
	}

	if _, ok := t.(reachable); ok {
		return t, nil
	}

	return reachable{t}, nil
}

// checkSealedObject verifies that pub can only be unsealed through
// policy: a sealed-data object fixed to this TPM and parent, no
// userWithAuth (with it, the empty authValue alone unseals), an authPolicy
// equal to policy, and PCR 7 bound (pcrs lists it and the policy is not
// the bare PolicyAuthorize digest authorizeOnly).
func checkSealedObject(pub *tpm2.TPMTPublic, policy, authorizeOnly []byte, pcrs []int) error {
	a := pub.ObjectAttributes

	switch {
	case pub.Type != tpm2.TPMAlgKeyedHash:
		return fmt.Errorf("%w: type %v is not a sealed keyedhash object", ErrWeakSeal, pub.Type)
	case pub.NameAlg != tpm2.TPMAlgSHA256:
		return fmt.Errorf("%w: name algorithm %v is not sha256", ErrWeakSeal, pub.NameAlg)
	case a.UserWithAuth:
		return fmt.Errorf("%w: userWithAuth is set (the empty authValue unseals without the policy)", ErrWeakSeal)
	case !a.FixedTPM || !a.FixedParent:
		return fmt.Errorf("%w: fixedTPM/fixedParent not set (the object could be duplicated to another TPM)", ErrWeakSeal)
	case a.SignEncrypt || a.Decrypt:
		return fmt.Errorf("%w: sign/decrypt set on a sealed data object", ErrWeakSeal)
	case len(pub.AuthPolicy.Buffer) != sha256.Size:
		return fmt.Errorf("%w: authPolicy is empty or not a sha256 digest", ErrWeakSeal)
	case !bytes.Equal(pub.AuthPolicy.Buffer, policy):
		return fmt.Errorf("%w: authPolicy %x differs from the recorded policy %x", ErrWeakSeal, pub.AuthPolicy.Buffer, policy)
	case !slices.Contains(pcrs, SecureBootStatePCR):
		return fmt.Errorf("%w: PCR %d (Secure Boot state) is not bound (PCRs %v)", ErrWeakSeal, SecureBootStatePCR, pcrs)
	case bytes.Equal(policy, authorizeOnly):
		return fmt.Errorf("%w: authPolicy is PolicyAuthorize alone, PCR %d is not bound", ErrWeakSeal, SecureBootStatePCR)
	}

	return nil
}

// authorizeCalculator is a policy calculator after PolicyAuthorize(pub),
// the first step of Talos's sealing policy.
func authorizeCalculator(pub *rsa.PublicKey) (*tpm2.PolicyCalculator, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}

	tmpl := rsaTemplate(pub)

	name, err := tpm2.ObjectName(&tmpl)
	if err != nil {
		return nil, fmt.Errorf("naming PCR public key: %w", err)
	}

	if err := (tpm2.PolicyAuthorize{KeySign: *name}).Update(calc); err != nil {
		return nil, fmt.Errorf("computing authorize policy: %w", err)
	}

	return calc, nil
}

// authorizeOnlyPolicy is the digest after PolicyAuthorize(pub) alone.
func authorizeOnlyPolicy(pub *rsa.PublicKey) ([]byte, error) {
	calc, err := authorizeCalculator(pub)
	if err != nil {
		return nil, err
	}

	return calc.Hash().Digest, nil
}

// ParsePCRPublicKey parses the UKI's .pcrpkey (SPKI PEM, RSA).
func ParsePCRPublicKey(data []byte) (*rsa.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("parsing PCR public key: no PEM block")
	}

	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		// accept PKCS#1 too, the signing key's native form
		if k1, err1 := x509.ParsePKCS1PublicKey(block.Bytes); err1 == nil {
			return k1, nil
		}

		return nil, fmt.Errorf("parsing PCR public key: %w", err)
	}

	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("parsing PCR public key: %T is not RSA", k)
	}

	return rk, nil
}

// Fingerprint is the "pkfp" of a signature entry: sha256 of the PKCS#1 DER.
func Fingerprint(pub *rsa.PublicKey) string {
	sum := sha256.Sum256(x509.MarshalPKCS1PublicKey(pub))

	return hex.EncodeToString(sum[:])
}

func rsaTemplate(pub *rsa.PublicKey) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			Decrypt:      true,
			SignEncrypt:  true,
			UserWithAuth: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{
				Algorithm: tpm2.TPMAlgNull,
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgRSA, tpm2.TPMAlgNull),
			},
			Scheme: tpm2.TPMTRSAScheme{
				Scheme: tpm2.TPMAlgNull,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSA, &tpm2.TPMSSigSchemeRSASSA{
					HashAlg: tpm2.TPMAlgNull,
				}),
			},
			KeyBits:  tpm2.TPMKeyBits(pub.N.BitLen()),
			Exponent: uint32(pub.E),
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: pub.N.Bytes()}),
	}
}

// Selection builds a sha256 PCR selection.
func Selection(pcrs ...int) tpm2.TPMLPCRSelection {
	mask := make([]byte, 3)
	for _, n := range pcrs {
		mask[n/8] |= 1 << (n % 8)
	}

	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: mask}}}
}

// ReadPCR reads a sha256 PCR.
func ReadPCR(t transport.TPM, pcr int) ([]byte, error) {
	resp, err := tpm2.PCRRead{PCRSelectionIn: Selection(pcr)}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("reading PCR %d: %w", pcr, err)
	}

	if len(resp.PCRValues.Digests) == 0 {
		return nil, fmt.Errorf("reading PCR %d: not allocated in sha256 bank", pcr)
	}

	return resp.PCRValues.Digests[0].Buffer, nil
}

// PolicyPCRDigest is the policy digest of PolicyPCR over PCR 11 holding
// pcrValue: the "pol" a .pcrsig entry signs.
func PolicyPCRDigest(pcrValue []byte) ([]byte, error) {
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}

	sum := sha256.Sum256(pcrValue)

	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: sum[:]}, Pcrs: Selection(UKIPCR)}).Update(calc); err != nil {
		return nil, fmt.Errorf("computing PCR policy: %w", err)
	}

	return calc.Hash().Digest, nil
}

// SealingPolicy computes the object's authPolicy: PolicyAuthorize(pub)
// followed by PolicyPCR over pcrs with their current values.
func SealingPolicy(t transport.TPM, pub *rsa.PublicKey, pcrs []int) ([]byte, error) {
	calc, err := authorizeCalculator(pub)
	if err != nil {
		return nil, err
	}

	if len(pcrs) > 0 {
		h := sha256.New()

		for _, p := range pcrs {
			v, err := ReadPCR(t, p)
			if err != nil {
				return nil, err
			}

			h.Write(v)
		}

		if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}, Pcrs: Selection(pcrs...)}).Update(calc); err != nil {
			return nil, fmt.Errorf("computing PCR policy: %w", err)
		}
	}

	return calc.Hash().Digest, nil
}

// weaken lets the package's tests alter the sealed object's template, to
// prove that Seal's check catches a weakened object; nil otherwise.
var weaken func(*tpm2.TPMTPublic)

func sealedTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:    true,
			FixedParent: true,
			// no dictionary-attack lockout: failed unseals are policy
			// mismatches, not guessing (systemd does the same)
			NoDA: true,
			// userWithAuth stays clear: only the policy session unseals
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
	}
}

type srk struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    *tpm2.TPMTPublic
}

// createSRK creates the transient ECC storage root key; the template is
// fixed, so the same TPM always derives the same key and name.
func createSRK(t transport.TPM) (*srk, func(), error) {
	resp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, nil, fmt.Errorf("creating SRK: %w", err)
	}

	pub, err := resp.OutPublic.Contents()
	if err != nil {
		return nil, nil, fmt.Errorf("creating SRK: %w", err)
	}

	flush := func() { _, _ = tpm2.FlushContext{FlushHandle: resp.ObjectHandle}.Execute(t) }

	return &srk{handle: resp.ObjectHandle, name: resp.Name, pub: pub}, flush, nil
}

// Seal seals key under a transient SRK with the Talos policy (pcrs are
// bound directly, normally [7]).
func Seal(t transport.TPM, key []byte, pub *rsa.PublicKey, pcrs []int) (*Sealed, error) {
	t, err := guard(t)
	if err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}

	// refuse before the TPM is asked: a key sealed without PCR 7 would
	// unlock whatever the Secure Boot state
	if !slices.Contains(pcrs, SecureBootStatePCR) {
		return nil, fmt.Errorf("sealing: %w: PCR %d (Secure Boot state) is not in %v", ErrWeakSeal, SecureBootStatePCR, pcrs)
	}

	policy, err := SealingPolicy(t, pub, pcrs)
	if err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}

	authorizeOnly, err := authorizeOnlyPolicy(pub)
	if err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}

	tmpl := sealedTemplate(policy)
	if weaken != nil {
		weaken(&tmpl)
	}

	s, flush, err := createSRK(t)
	if err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}
	defer flush()

	// The session is salted with the SRK and encrypts the key parameter so
	// the key never crosses the TPM bus in clear.
	resp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{
			Handle: s.handle,
			Name:   s.name,
			Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 32,
				tpm2.Salted(s.handle, *s.pub),
				tpm2.AESEncryption(128, tpm2.EncryptInOut)),
		},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: key}),
		}},
		InPublic: tpm2.New2B(tmpl),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}

	// check what the TPM created, not what was asked for
	created, err := resp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("sealing: decoding the created object: %w", err)
	}

	if err := checkSealedObject(created, policy, authorizeOnly, pcrs); err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}

	return &Sealed{
		Private:           tpm2.Marshal(resp.OutPrivate),
		Public:            tpm2.Marshal(resp.OutPublic),
		KeyName:           tpm2.Marshal(s.name),
		PolicyDigest:      policy,
		PCRs:              pcrs,
		PubKeyPCRs:        []int{UKIPCR},
		EncryptionVersion: EncryptionVersion,
		Alg:               "sha256",
	}, nil
}

// Unseal satisfies the policy with the signed PCR 11 policy from sig and
// the current PCR 7 value, and returns the key.
func Unseal(t transport.TPM, sealed *Sealed, pub *rsa.PublicKey, sig *Signature) ([]byte, error) {
	t, err := guard(t)
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}

	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](sealed.Private)
	if err != nil {
		return nil, fmt.Errorf("unsealing: decoding private blob: %w", err)
	}

	objPub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](sealed.Public)
	if err != nil {
		return nil, fmt.Errorf("unsealing: decoding public blob: %w", err)
	}

	objContents, err := objPub.Contents()
	if err != nil {
		return nil, fmt.Errorf("unsealing: decoding public blob: %w", err)
	}

	authorizeOnly, err := authorizeOnlyPolicy(pub)
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}

	// the token is not trusted: the object it carries must itself demand
	// the full policy, or an altered token could unlock without PCR 7
	if err := checkSealedObject(objContents, sealed.PolicyDigest, authorizeOnly, sealed.PCRs); err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}

	wantSRK, err := tpm2.Unmarshal[tpm2.TPM2BName](sealed.KeyName)
	if err != nil {
		return nil, fmt.Errorf("unsealing: decoding SRK name: %w", err)
	}

	s, flush, err := createSRK(t)
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}
	defer flush()

	if !bytes.Equal(s.name.Buffer, wantSRK.Buffer) {
		return nil, fmt.Errorf("unsealing: %w", ErrSRKMismatch)
	}

	loaded, err := tpm2.Load{
		ParentHandle: tpm2.NamedHandle{Handle: s.handle, Name: s.name},
		InPrivate:    *priv,
		InPublic:     *objPub,
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("unsealing: loading sealed object: %w", err)
	}

	defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(t) //nolint:errcheck

	sess, closeSess, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, 32, tpm2.Salted(s.handle, *s.pub))
	if err != nil {
		return nil, fmt.Errorf("unsealing: starting policy session: %w", err)
	}

	defer closeSess() //nolint:errcheck

	ext, err := tpm2.LoadExternal{
		Hierarchy: tpm2.TPMRHOwner,
		InPublic:  tpm2.New2B(rsaTemplate(pub)),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("unsealing: loading PCR public key: %w", err)
	}

	defer tpm2.FlushContext{FlushHandle: ext.ObjectHandle}.Execute(t) //nolint:errcheck

	approved, err := policyPCR(t, sess.Handle(), Selection(UKIPCR))
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}

	entry, err := sig.Find(approved)
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}

	if entry.PKFP != Fingerprint(pub) {
		return nil, fmt.Errorf("unsealing: %w", ErrKeyFingerprint)
	}

	rawSig, err := entry.Signature()
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}

	// VerifySignature checks the RSA part over a digest we hash ourselves.
	digest := sha256.Sum256(approved)

	verified, err := tpm2.VerifySignature{
		KeyHandle: ext.ObjectHandle,
		Digest:    tpm2.TPM2BDigest{Buffer: digest[:]},
		Signature: tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgRSASSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
				Hash: tpm2.TPMAlgSHA256,
				Sig:  tpm2.TPM2BPublicKeyRSA{Buffer: rawSig},
			}),
		},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("unsealing: verifying PCR policy signature: %w", err)
	}

	if _, err := (tpm2.PolicyAuthorize{
		PolicySession:  sess.Handle(),
		ApprovedPolicy: tpm2.TPM2BDigest{Buffer: approved},
		KeySign:        ext.Name,
		CheckTicket:    verified.Validation,
	}).Execute(t); err != nil {
		return nil, fmt.Errorf("unsealing: authorizing policy: %w", err)
	}

	if len(sealed.PCRs) > 0 {
		got, err := policyPCR(t, sess.Handle(), Selection(sealed.PCRs...))
		if err != nil {
			return nil, fmt.Errorf("unsealing: %w", err)
		}

		if !bytes.Equal(got, sealed.PolicyDigest) {
			return nil, fmt.Errorf("unsealing: %w (PCRs %v; policy %x, sealed %x)", ErrPolicyMismatch, sealed.PCRs, got, sealed.PolicyDigest)
		}
	}

	out, err := tpm2.Unseal{
		ItemHandle: tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: sess},
	}.Execute(t, tpm2.HMAC(tpm2.TPMAlgSHA256, 32,
		tpm2.Salted(s.handle, *s.pub),
		tpm2.AESEncryption(128, tpm2.EncryptOut),
		tpm2.Bound(loaded.ObjectHandle, loaded.Name, nil)))
	if err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}

	return out.OutData.Buffer, nil
}

func policyPCR(t transport.TPM, h tpm2.TPMHandle, sel tpm2.TPMLPCRSelection) ([]byte, error) {
	if _, err := (tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}).Execute(t); err != nil {
		return nil, fmt.Errorf("policy PCR: %w", err)
	}

	d, err := tpm2.PolicyGetDigest{PolicySession: h}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("policy digest: %w", err)
	}

	return d.PolicyDigest.Buffer, nil
}

// SignPolicy produces a .pcrsig entry for a PCR 11 value, as a UKI builder
// does: RSA PKCS#1 v1.5 over sha256 of the PolicyPCR digest.
func SignPolicy(key *rsa.PrivateKey, pcr11 []byte) (BankData, error) {
	pol, err := PolicyPCRDigest(pcr11)
	if err != nil {
		return BankData{}, err
	}

	sum := sha256.Sum256(pol)

	sig, err := rsa.SignPKCS1v15(nil, key, crypto.SHA256, sum[:])
	if err != nil {
		return BankData{}, fmt.Errorf("signing PCR policy: %w", err)
	}

	return BankData{
		PCRs: []int{UKIPCR},
		PKFP: Fingerprint(&key.PublicKey),
		Pol:  hex.EncodeToString(pol),
		Sig:  encodeSig(sig),
	}, nil
}
