package tpmseal_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/labos/internal/swtpmtest"
	"github.com/labfleet/labfleet/lab/labos/pcrphase"
	"github.com/labfleet/labfleet/lab/labos/tpmseal"
)

// measureUKI stands in for systemd-stub measuring a UKI into PCR 11.
func measureUKI(t *testing.T, tpm transport.TPM, section string) {
	t.Helper()

	for _, p := range []pcrphase.Phase{pcrphase.Phase(section)} {
		require.NoError(t, pcrphase.Extend(tpm, p))
	}
}

// signature builds the .pcrsig a UKI builder would produce: the value PCR 11
// will hold after the signed phases, starting from what the stub measured.
func signature(t *testing.T, key *rsa.PrivateKey, afterStub []byte) *tpmseal.Signature {
	t.Helper()

	want := pcrphase.Predict(crypto.SHA256, afterStub, pcrphase.Signed...)
	entry, err := tpmseal.SignPolicy(key, want)
	require.NoError(t, err)

	return &tpmseal.Signature{SHA256: []tpmseal.BankData{entry}}
}

func pemPub(t *testing.T, k *rsa.PrivateKey) *rsa.PublicKey {
	t.Helper()

	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	require.NoError(t, err)

	pub, err := tpmseal.ParsePCRPublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	require.NoError(t, err)

	return pub
}

func extendPCR7(t *testing.T, tpm transport.TPM) {
	t.Helper()

	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(7), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)}}},
	}.Execute(tpm)
	require.NoError(t, err)
}

func TestSealUnseal(t *testing.T) {
	pcrKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	otherKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	cases := []struct {
		name string
		// after sealing at enter-machined, before unsealing
		tamper    func(t *testing.T, tpm transport.TPM)
		signer    *rsa.PrivateKey // key that signed .pcrsig
		unsealPub *rsa.PrivateKey // key embedded as .pcrpkey at unseal time
		wantErr   string
	}{
		{name: "same boot", signer: pcrKey, unsealPub: pcrKey},
		{
			name: "after start-the-world",
			tamper: func(t *testing.T, tpm transport.TPM) {
				require.NoError(t, pcrphase.Extend(tpm, pcrphase.StartTheWorld))
			},
			signer:    pcrKey,
			unsealPub: pcrKey,
			wantErr:   tpmseal.ErrNoMatchingSignature.Error(),
		},
		{
			name:      "signed with another PCR key",
			signer:    otherKey,
			unsealPub: otherKey,
			// the other key's signature verifies, but the object was sealed
			// to the first key's name, so the policy cannot match
			wantErr: tpmseal.ErrPolicyMismatch.Error(),
		},
		{
			name:      "fingerprint mismatch",
			signer:    otherKey,
			unsealPub: pcrKey,
			wantErr:   tpmseal.ErrKeyFingerprint.Error(),
		},
		{
			name:      "PCR 7 changed",
			tamper:    extendPCR7,
			signer:    pcrKey,
			unsealPub: pcrKey,
			wantErr:   tpmseal.ErrPolicyMismatch.Error(),
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tpm := swtpmtest.Start(t)

			extendPCR7(t, tpm) // firmware measures Secure Boot state
			measureUKI(t, tpm, "uki-sections")

			afterStub, err := tpmseal.ReadPCR(tpm, tpmseal.UKIPCR)
			require.NoError(t, err)

			require.NoError(t, pcrphase.Extend(tpm, pcrphase.EnterInitrd))
			require.NoError(t, pcrphase.Extend(tpm, pcrphase.LeaveInitrd))
			require.NoError(t, pcrphase.Extend(tpm, pcrphase.EnterMachined))

			key := make([]byte, 32)
			_, err = rand.Read(key)
			require.NoError(t, err)

			sealed, err := tpmseal.Seal(tpm, key, pemPub(t, pcrKey), []int{tpmseal.SecureBootStatePCR})
			require.NoError(t, err)

			// round-trip through the LUKS2 token JSON as a reboot would
			tokJSON, err := jsonMarshal(tpmseal.NewToken(sealed, 0))
			require.NoError(t, err)
			tok, err := tpmseal.ParseToken(tokJSON)
			require.NoError(t, err)

			if tc.tamper != nil {
				tc.tamper(t, tpm)
			}

			sig := signature(t, tc.signer, afterStub)

			got, err := tpmseal.Unseal(tpm, tok.Sealed(), pemPub(t, tc.unsealPub), sig)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)

				for name, sentinel := range sentinels {
					if sentinel.Error() == tc.wantErr {
						only(t, err, name) // one refusal, one reason
					}
				}
				require.Nil(t, got)

				return
			}

			require.NoError(t, err)
			require.Equal(t, key, got)

			// and after start-the-world the same key is gone
			require.NoError(t, pcrphase.Extend(tpm, pcrphase.StartTheWorld))
			_, err = tpmseal.Unseal(tpm, tok.Sealed(), pemPub(t, pcrKey), sig)
			require.ErrorIs(t, err, tpmseal.ErrNoMatchingSignature)
		})
	}
}
