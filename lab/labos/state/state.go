// Package state creates and unlocks the encrypted STATE volume the way a
// Talos node does: on first boot a random key sealed to the TPM (stored as
// a LUKS2 token), on later boots the token unsealed with the UKI's signed
// PCR policy. It never prompts and never falls back to an unprotected
// volume: on failure the volume stays closed and the reason is returned.
package state

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/lab/labos/luks"
	"github.com/labfleet/labfleet/lab/labos/tpmseal"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// Files systemd-stub hands the initrd from the UKI's .pcrpkey and .pcrsig.
const (
	PCRPublicKeyPath = "/.extra/tpm2-pcr-public-key.pem"
	PCRSignaturePath = "/.extra/tpm2-pcr-signature.json"
)

// TokenID is the LUKS2 token slot holding the sealed key.
const TokenID = 0

// KeySlot is the LUKS2 keyslot the sealed key opens.
const KeySlot = 0

// Reason classifies an unlock failure for the console marker.
type Reason string

// Failure reasons.
const (
	ReasonNoTPM          Reason = "no-tpm"
	ReasonNoPCRKey       Reason = "no-pcr-public-key"
	ReasonNoSignature    Reason = "no-pcr-signature"
	ReasonNoToken        Reason = "no-token"
	ReasonPCR11          Reason = "pcr11-not-signed" // booted UKI/phase not covered by .pcrsig
	ReasonPolicy         Reason = "pcr7-or-key-changed"
	ReasonSRK            Reason = "srk-changed"
	ReasonKeyRejected    Reason = "key-rejected"
	ReasonUnseal         Reason = "unseal-failed"
	ReasonFormat         Reason = "format-failed"
	ReasonOpen           Reason = "open-failed"
	ReasonMount          Reason = "mount-failed"
	ReasonNoPartition    Reason = "no-state-partition"
	ReasonSecureBootOff  Reason = "secureboot-off"
	ReasonSecureBootMode Reason = "setup-mode"
	// ReasonTPMUnreachable: the TPM did not answer; nothing was refused.
	ReasonTPMUnreachable Reason = "tpm-unreachable"
	// ReasonWeakSeal: the sealed object would open without its policy.
	ReasonWeakSeal Reason = "seal-weakened"
)

// Error is an unlock failure with its reason.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %v", e.Reason, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

func fail(r Reason, err error) error { return &Error{Reason: r, Err: err} }

// ReasonOf extracts the reason of an unlock error.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}

	return ReasonUnseal
}

// Volume describes the STATE volume.
type Volume struct {
	Device     string // partition, e.g. /dev/vda3
	MapName    string // device-mapper name, e.g. "state"
	MountPoint string // e.g. /var
	Mkfs       string // mke2fs path; empty means from PATH
	Crypt      luks.Cryptsetup
	// SealGate, when set, is asked before a new key is sealed and the
	// device formatted; its error leaves the device untouched. An existing
	// volume is still unlocked: there the TPM's PCR 7 policy decides.
	SealGate func() error
	// Progress, when set, is told each step of Unlock as it completes (labos
	// prints them as timed console markers).
	Progress func(Step)
}

// Step is a completed step of Unlock, named as its console marker.
type Step string

// Steps of Unlock, in order.
const (
	StepKeyUnsealed  Step = nodeapi.MarkerKeyUnsealed  // key unsealed (later boots) or made and sealed (first boot)
	StepLUKSOpened   Step = nodeapi.MarkerLUKSOpened   // dm-crypt mapping open
	StepStateMounted Step = nodeapi.MarkerStateMounted // ext4 mounted (made first on the first boot)
)

func (v Volume) progress(s Step) {
	if v.Progress != nil {
		v.Progress(s)
	}
}

// Keys are the UKI's PCR policy inputs.
type Keys struct {
	PCRPublicKey []byte // .pcrpkey PEM
	Signature    []byte // .pcrsig JSON
}

// ReadKeys reads the files systemd-stub placed in /.extra.
func ReadKeys() (Keys, error) {
	pk, err := os.ReadFile(PCRPublicKeyPath)
	if err != nil {
		return Keys{}, fail(ReasonNoPCRKey, err)
	}

	sig, err := os.ReadFile(PCRSignaturePath)
	if err != nil {
		return Keys{PCRPublicKey: pk}, fail(ReasonNoSignature, err)
	}

	return Keys{PCRPublicKey: pk, Signature: sig}, nil
}

// Result says what Unlock did.
type Result struct {
	Formatted bool   // created on this boot
	Mapped    string // /dev/mapper/<name>
}

// passphrase is what cryptsetup gets: the key base64-encoded, as Talos
// does, so the keyslot stays usable from a shell with a pasted key.
func passphrase(key []byte) []byte {
	return []byte(base64.StdEncoding.EncodeToString(key))
}

// Unlock formats (first boot) or unseals and opens the volume, then mounts it.
// The caller extends start-the-world right after, whatever the outcome.
func (v Volume) Unlock(ctx context.Context, tpm transport.TPM, keys Keys) (Result, error) {
	isLUKS, err := v.Crypt.IsLUKS(ctx, v.Device)
	if err != nil {
		return Result{}, fail(ReasonOpen, err)
	}

	if !isLUKS && v.SealGate != nil {
		if err := v.SealGate(); err != nil {
			return Result{}, err
		}
	}

	if tpm == nil {
		return Result{}, fail(ReasonNoTPM, errors.New("no TPM device"))
	}

	var (
		key []byte
		res Result
	)

	if isLUKS {
		key, err = v.Recover(ctx, tpm, keys)
	} else {
		key, err = v.Provision(ctx, tpm, keys)
		res.Formatted = true
	}

	if err != nil {
		return Result{}, err
	}

	v.progress(StepKeyUnsealed)

	res.Mapped, err = v.Crypt.Open(ctx, v.Device, v.MapName, passphrase(key))
	if errors.Is(err, luks.ErrKeyRejected) {
		return Result{}, fail(ReasonKeyRejected, err)
	}

	if err != nil {
		return Result{}, fail(ReasonOpen, err)
	}

	v.progress(StepLUKSOpened)

	if res.Formatted {
		if err := v.mkfs(ctx, res.Mapped); err != nil {
			_ = v.Crypt.Close(ctx, v.MapName)

			return Result{}, err
		}
	}

	if err := os.MkdirAll(v.MountPoint, 0o755); err != nil {
		_ = v.Crypt.Close(ctx, v.MapName)

		return Result{}, fail(ReasonMount, err)
	}

	// noinit_itable: do not zero the lazily initialised inode tables in the
	// background; under TCG that thread would compete with the boot.
	if err := unix.Mount(res.Mapped, v.MountPoint, "ext4", unix.MS_NOSUID|unix.MS_NODEV, "noinit_itable"); err != nil {
		_ = v.Crypt.Close(ctx, v.MapName)

		return Result{}, fail(ReasonMount, fmt.Errorf("mounting %s: %w", res.Mapped, err))
	}

	v.progress(StepStateMounted)

	return res, nil
}

// Provision seals a new random key to the TPM, LUKS2-formats the device
// with it and stores the sealed key as a token; it returns the key.
func (v Volume) Provision(ctx context.Context, tpm transport.TPM, keys Keys) ([]byte, error) {
	pub, err := tpmseal.ParsePCRPublicKey(keys.PCRPublicKey)
	if err != nil {
		return nil, fail(ReasonNoPCRKey, err)
	}

	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fail(ReasonFormat, err)
	}

	sealed, err := tpmseal.Seal(tpm, key, pub, []int{tpmseal.SecureBootStatePCR})

	switch {
	case errors.Is(err, tpmseal.ErrTPMUnreachable):
		return nil, fail(ReasonTPMUnreachable, err)
	case errors.Is(err, tpmseal.ErrWeakSeal):
		return nil, fail(ReasonWeakSeal, err)
	case err != nil:
		return nil, fail(ReasonFormat, err)
	}

	tok, err := json.Marshal(tpmseal.NewToken(sealed, KeySlot))
	if err != nil {
		return nil, fail(ReasonFormat, err)
	}

	if err := v.Crypt.Format(ctx, v.Device, passphrase(key)); err != nil {
		return nil, fail(ReasonFormat, err)
	}

	if err := v.Crypt.ImportToken(ctx, v.Device, TokenID, KeySlot, tok); err != nil {
		return nil, fail(ReasonFormat, err)
	}

	return key, nil
}

// Recover unseals the key stored in the device's token.
func (v Volume) Recover(ctx context.Context, tpm transport.TPM, keys Keys) ([]byte, error) {
	pub, err := tpmseal.ParsePCRPublicKey(keys.PCRPublicKey)
	if err != nil {
		return nil, fail(ReasonNoPCRKey, err)
	}

	if len(keys.Signature) == 0 {
		return nil, fail(ReasonNoSignature, errors.New("no PCR signature"))
	}

	sig, err := tpmseal.ParseSignature(keys.Signature)
	if err != nil {
		return nil, fail(ReasonNoSignature, err)
	}

	raw, err := v.Crypt.ExportToken(ctx, v.Device, TokenID)
	if err != nil {
		return nil, fail(ReasonNoToken, err)
	}

	tok, err := tpmseal.ParseToken(raw)
	if err != nil {
		return nil, fail(ReasonNoToken, err)
	}

	key, err := tpmseal.Unseal(tpm, tok.Sealed(), pub, sig)

	switch {
	case errors.Is(err, tpmseal.ErrTPMUnreachable):
		return nil, fail(ReasonTPMUnreachable, err)
	case errors.Is(err, tpmseal.ErrWeakSeal):
		return nil, fail(ReasonWeakSeal, err)
	case errors.Is(err, tpmseal.ErrNoMatchingSignature):
		return nil, fail(ReasonPCR11, err)
	case errors.Is(err, tpmseal.ErrPolicyMismatch), errors.Is(err, tpmseal.ErrKeyFingerprint):
		return nil, fail(ReasonPolicy, err)
	case errors.Is(err, tpmseal.ErrSRKMismatch):
		return nil, fail(ReasonSRK, err)
	case err != nil:
		return nil, fail(ReasonUnseal, err)
	}

	return key, nil
}

func (v Volume) mkfs(ctx context.Context, dev string) error {
	mkfs := v.Mkfs
	if mkfs == "" {
		mkfs = "mke2fs"
	}

	// lazy init keeps mke2fs from writing every inode table through
	// dm-crypt, which costs seconds under emulation
	out, err := exec.CommandContext(ctx, mkfs, "-t", "ext4", "-q", "-F", "-L", "STATE",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", dev).CombinedOutput()
	if err != nil {
		return fail(ReasonFormat, fmt.Errorf("mke2fs: %w: %s", err, strings.TrimSpace(string(out))))
	}

	return nil
}
