package tpmseal_test

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/internal/swtpmtest"
	"github.com/labfleet/labfleet/lab/labos/pcrphase"
	"github.com/labfleet/labfleet/lab/labos/tpmseal"
)

// sentinels are the refusals callers turn into distinct unlock reasons
// (state: pcr11-not-signed, pcr7-or-key-changed, srk-changed, ...).
var sentinels = map[string]error{
	"no-matching-signature": tpmseal.ErrNoMatchingSignature,
	"key-fingerprint":       tpmseal.ErrKeyFingerprint,
	"policy-mismatch":       tpmseal.ErrPolicyMismatch,
	"srk-mismatch":          tpmseal.ErrSRKMismatch,
	"weak-seal":             tpmseal.ErrWeakSeal,
	"tpm-unreachable":       tpmseal.ErrTPMUnreachable,
}

// only asserts err is exactly one refusal: the one named want.
func only(t *testing.T, err error, want string) {
	t.Helper()

	require.Error(t, err)

	var got []string

	for name, s := range sentinels {
		if errors.Is(err, s) {
			got = append(got, name)
		}
	}

	require.Equal(t, []string{want}, got, "error: %v", err)
}

// booted is a TPM as labos sees it at enter-machined: PCR 7 measured,
// the UKI measured into PCR 11 and the signed phases extended.
type booted struct {
	tpm    transport.TPM
	key    *rsa.PrivateKey
	sig    *tpmseal.Signature
	secret []byte
}

func boot(t *testing.T) booted {
	t.Helper()

	tpm := swtpmtest.Start(t)

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	extendPCR7(t, tpm)
	measureUKI(t, tpm, "uki-sections")

	afterStub, err := tpmseal.ReadPCR(tpm, tpmseal.UKIPCR)
	require.NoError(t, err)

	for _, p := range []pcrphase.Phase{pcrphase.EnterInitrd, pcrphase.LeaveInitrd, pcrphase.EnterMachined} {
		require.NoError(t, pcrphase.Extend(tpm, p))
	}

	secret := make([]byte, 32)
	_, err = rand.Read(secret)
	require.NoError(t, err)

	return booted{tpm: tpm, key: key, sig: signature(t, key, afterStub), secret: secret}
}

// rawSeal seals b.secret the way tpmseal.Seal does but with the object
// template changed by alter and authPolicy over pcrs: what a regressed or
// tampered Seal would produce.
func rawSeal(t *testing.T, b booted, pcrs []int, alter func(*tpm2.TPMTPublic)) *tpmseal.Sealed {
	t.Helper()

	policy, err := tpmseal.SealingPolicy(b.tpm, pemPub(t, b.key), pcrs)
	require.NoError(t, err)

	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(b.tpm)
	require.NoError(t, err)

	defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(b.tpm) //nolint:errcheck

	tmpl := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
	}
	alter(&tmpl)

	resp, err := tpm2.Create{
		ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: b.secret}),
		}},
		InPublic: tpm2.New2B(tmpl),
	}.Execute(b.tpm)
	require.NoError(t, err)

	return &tpmseal.Sealed{
		Private: tpm2.Marshal(resp.OutPrivate), Public: tpm2.Marshal(resp.OutPublic), KeyName: tpm2.Marshal(srk.Name),
		PolicyDigest: policy, PCRs: pcrs, PubKeyPCRs: []int{tpmseal.UKIPCR}, EncryptionVersion: tpmseal.EncryptionVersion, Alg: "sha256",
	}
}

// passwordUnseal tries to unseal with the empty authValue and no policy:
// what anyone with the disk's token and the TPM could do if the object
// allowed it.
func passwordUnseal(t *testing.T, tpm transport.TPM, s *tpmseal.Sealed) ([]byte, error) {
	t.Helper()

	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	require.NoError(t, err)

	defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(tpm) //nolint:errcheck

	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](s.Private)
	require.NoError(t, err)
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](s.Public)
	require.NoError(t, err)

	obj, err := tpm2.Load{ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}, InPrivate: *priv, InPublic: *pub}.Execute(tpm)
	require.NoError(t, err)

	defer tpm2.FlushContext{FlushHandle: obj.ObjectHandle}.Execute(tpm) //nolint:errcheck

	out, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: obj.ObjectHandle, Name: obj.Name, Auth: tpm2.PasswordAuth(nil)}}.Execute(tpm)
	if err != nil {
		return nil, err
	}

	return out.OutData.Buffer, nil
}

// The object Seal makes can be unsealed only through the policy: the TPM
// itself refuses the empty password. If Seal's template were weakened
// (userWithAuth), this test and TestWeakSealRefused would fail.
func TestSealedObjectOnlyUnsealsByPolicy(t *testing.T) {
	b := boot(t)

	sealed, err := tpmseal.Seal(b.tpm, b.secret, pemPub(t, b.key), []int{tpmseal.SecureBootStatePCR})
	require.NoError(t, err)

	_, err = passwordUnseal(t, b.tpm, sealed)

	var rc tpm2.TPMRC
	require.ErrorAs(t, err, &rc, "the refusal is the TPM's response code, got %v", err)
	require.ErrorIs(t, err, tpm2.TPMRCAuthUnavailable)

	got, err := tpmseal.Unseal(b.tpm, sealed, pemPub(t, b.key), b.sig)
	require.NoError(t, err)
	require.Equal(t, b.secret, got)
}

func TestWeakSealRefused(t *testing.T) {
	t.Run("Seal refuses userWithAuth", func(t *testing.T) {
		b := boot(t)

		restore := tpmseal.SetWeaken(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = true })
		defer restore()

		_, err := tpmseal.Seal(b.tpm, b.secret, pemPub(t, b.key), []int{tpmseal.SecureBootStatePCR})
		only(t, err, "weak-seal")
		require.ErrorContains(t, err, "userWithAuth is set")
	})

	t.Run("Seal refuses duplicable object", func(t *testing.T) {
		b := boot(t)

		restore := tpmseal.SetWeaken(func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM, p.ObjectAttributes.FixedParent = false, false })
		defer restore()

		_, err := tpmseal.Seal(b.tpm, b.secret, pemPub(t, b.key), []int{tpmseal.SecureBootStatePCR})
		only(t, err, "weak-seal")
		require.ErrorContains(t, err, "fixedTPM/fixedParent")
	})

	t.Run("Seal refuses no PCR 7", func(t *testing.T) {
		b := boot(t)

		_, err := tpmseal.Seal(b.tpm, b.secret, pemPub(t, b.key), nil)
		only(t, err, "weak-seal")
		require.ErrorContains(t, err, "PCR 7 (Secure Boot state) is not in")
	})

	cases := []struct {
		name    string
		pcrs    []int
		alter   func(*tpm2.TPMTPublic)
		token   func(*tpmseal.Sealed)
		wantErr string
		// the weakness is real: the empty password unseals
		passwordWorks bool
	}{
		{name: "userWithAuth set", pcrs: []int{7}, alter: func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = true },
			wantErr: "userWithAuth is set", passwordWorks: true},
		{name: "no PolicyPCR on PCR 7", pcrs: nil, alter: func(*tpm2.TPMTPublic) {},
			wantErr: "PCR 7 (Secure Boot state) is not bound"},
		{name: "token claims PCR 7 the object does not bind", pcrs: nil, alter: func(*tpm2.TPMTPublic) {},
			token: func(s *tpmseal.Sealed) { s.PCRs = []int{7} }, wantErr: "authPolicy is PolicyAuthorize alone"},
		{name: "token policy differs from the object's", pcrs: []int{7}, alter: func(*tpm2.TPMTPublic) {},
			token: func(s *tpmseal.Sealed) { s.PolicyDigest = make([]byte, 32) }, wantErr: "differs from the recorded policy"},
	}

	for _, tc := range cases {
		t.Run("Unseal refuses "+tc.name, func(t *testing.T) {
			b := boot(t)
			sealed := rawSeal(t, b, tc.pcrs, tc.alter)

			if tc.passwordWorks {
				got, err := passwordUnseal(t, b.tpm, sealed)
				require.NoError(t, err, "the weakened object should open with the empty password")
				require.Equal(t, b.secret, got)
			}

			if tc.token != nil {
				tc.token(sealed)
			}

			got, err := tpmseal.Unseal(b.tpm, sealed, pemPub(t, b.key), b.sig)
			only(t, err, "weak-seal")
			require.ErrorContains(t, err, tc.wantErr)
			require.Nil(t, got)
		})
	}
}

// TPM cleared (new owner seed): the SRK differs, its own reason.
func TestSRKChanged(t *testing.T) {
	b := boot(t)

	sealed, err := tpmseal.Seal(b.tpm, b.secret, pemPub(t, b.key), []int{tpmseal.SecureBootStatePCR})
	require.NoError(t, err)

	_, err = tpm2.Clear{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)}}.Execute(b.tpm)
	require.NoError(t, err)

	_, err = tpmseal.Unseal(b.tpm, sealed, pemPub(t, b.key), b.sig)
	only(t, err, "srk-mismatch")
}

// failAfter forwards n commands to the TPM, then behaves like a swtpm that
// went away.
type failAfter struct {
	t    transport.TPM
	n    int
	sent int
}

func (f *failAfter) Send(cmd []byte) ([]byte, error) {
	if f.sent >= f.n {
		return nil, fmt.Errorf("writing TPM command: %w", net.ErrClosed)
	}

	f.sent++

	return f.t.Send(cmd)
}

// A TPM that does not answer is reported as unreachable, never as a policy
// refusal, wherever in the unseal it goes away.
func TestTPMUnreachable(t *testing.T) {
	b := boot(t)
	pub := pemPub(t, b.key)

	sealed, err := tpmseal.Seal(b.tpm, b.secret, pub, []int{tpmseal.SecureBootStatePCR})
	require.NoError(t, err)

	t.Run("no transport", func(t *testing.T) {
		_, err := tpmseal.Unseal(nil, sealed, pub, b.sig)
		only(t, err, "tpm-unreachable")

		_, err = tpmseal.Seal(nil, b.secret, pub, []int{tpmseal.SecureBootStatePCR})
		only(t, err, "tpm-unreachable")
	})

	t.Run("peer hung up", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)

		defer l.Close() //nolint:errcheck

		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}

				c.Close() //nolint:errcheck
			}
		}()

		c, err := net.Dial("tcp", l.Addr().String())
		require.NoError(t, err)

		defer c.Close() //nolint:errcheck

		_, err = tpmseal.Unseal(transport.FromReadWriter(c), sealed, pub, b.sig)
		only(t, err, "tpm-unreachable")
	})

	// count the commands of a successful unseal, then cut the TPM off
	// before each of them in turn
	counter := &failAfter{t: b.tpm, n: 1 << 30}
	_, err = tpmseal.Unseal(counter, sealed, pub, b.sig)
	require.NoError(t, err)
	require.Greater(t, counter.sent, 5)

	unsealed := 0

	for n := range counter.sent {
		got, err := tpmseal.Unseal(&failAfter{t: b.tpm, n: n}, sealed, pub, b.sig)
		flushAll(t, b.tpm) // what the cut-off run could not flush

		if err == nil {
			// only the trailing flushes were cut: the key was unsealed
			require.Equal(t, b.secret, got)

			unsealed++

			continue
		}

		only(t, err, "tpm-unreachable")
	}

	require.Less(t, unsealed, 5, "at most the deferred flushes may be cut without an error")
}

// flushAll flushes every transient object and session, so the next case
// starts with an empty TPM.
func flushAll(t *testing.T, tpm transport.TPM) {
	t.Helper()

	for _, ht := range []tpm2.TPMHT{tpm2.TPMHTTransient, tpm2.TPMHTHMACSession, tpm2.TPMHTPolicySession} {
		resp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(ht) << 24, PropertyCount: 64}.Execute(tpm)
		require.NoError(t, err)

		hs, err := resp.CapabilityData.Data.Handles()
		require.NoError(t, err)

		for _, h := range hs.Handle {
			_, err := tpm2.FlushContext{FlushHandle: h}.Execute(tpm)
			require.NoError(t, err)
		}
	}
}
