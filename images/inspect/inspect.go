// Package inspect reports what is inside a signed UKI (or any PE/EFI
// binary) and a disk image: PE sections and their digests, Authenticode
// signers and verification against a certificate, the UKI's .pcrsig,
// os-release, cmdline and uname; for a GPT disk image its partitions, the
// ESP's files, and the same report for every EFI binary on the ESP.
package inspect

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
)

// Options tunes Inspect.
type Options struct {
	// CertPath is a PEM or DER certificate (typically the keys directory's
	// uki-signing-cert.pem, the db entry) to verify Authenticode signatures
	// against. Empty: signatures are listed, not verified.
	CertPath string
}

// Kinds of file Inspect understands.
const (
	KindPE   = "pe"
	KindDisk = "disk"
)

// Report is what Inspect found. Exactly one of PE and Disk is set.
type Report struct {
	// Path is the inspected file.
	Path string `json:"path"`
	// Kind is "pe" or "disk".
	Kind string `json:"kind"`
	// Size is the file size in bytes.
	Size int64 `json:"size"`
	// SHA256 is the digest of the whole file.
	SHA256 string `json:"sha256"`
	// Cert is the certificate signatures were verified against, if any.
	Cert string `json:"cert,omitempty"`

	PE   *PE   `json:"pe,omitempty"`
	Disk *Disk `json:"disk,omitempty"`
}

// ErrUnknownFormat is returned for files that are neither PE nor GPT.
var ErrUnknownFormat = errors.New("not a PE/EFI binary or a GPT disk image")

// ErrBadInput is matched (errors.Is) by every error Inspect returns: each
// is about the file or certificate it was given (missing, unreadable, not
// PE or GPT, malformed), never about the machine.
var ErrBadInput = errors.New("bad input")

type inputError struct{ err error }

func (e inputError) Error() string   { return e.err.Error() }
func (e inputError) Unwrap() []error { return []error{ErrBadInput, e.err} }

// Inspect reads path, a PE/EFI binary (a UKI, systemd-boot) or a GPT disk
// image, and reports its contents. The file is never modified.
func Inspect(path string, opts Options) (_ *Report, err error) {
	// The parsers below (debug/pe, go-diskfs, go-uefi) read untrusted input;
	// a malformed file must be an error, not a crash of the caller.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s: malformed input: %v", path, p)
		}

		if err != nil {
			err = inputError{err}
		}
	}()

	var cert *x509.Certificate

	if opts.CertPath != "" {
		cert, err = readCertificate(opts.CertPath)
		if err != nil {
			return nil, err
		}
	}

	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck

	st, err := f.Stat()
	if err != nil {
		return nil, err
	}

	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hashing %s: %w", path, err)
	}

	r := &Report{Path: path, Size: st.Size(), SHA256: hex.EncodeToString(h.Sum(nil)), Cert: opts.CertPath}

	magic := make([]byte, 2)
	if _, err := f.ReadAt(magic, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}

	switch {
	case string(magic) == "MZ":
		r.Kind = KindPE

		r.PE, err = inspectPE(f, cert, opts.CertPath)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case isGPT(f):
		r.Kind = KindDisk

		r.Disk, err = inspectDisk(path, cert, opts.CertPath)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	default:
		return nil, fmt.Errorf("%s: %w", path, ErrUnknownFormat)
	}

	return r, nil
}

// isGPT looks for the "EFI PART" header signature at LBA 1 (512-byte
// sectors, the only size labfleet writes).
func isGPT(r io.ReaderAt) bool {
	sig := make([]byte, 8)
	if _, err := r.ReadAt(sig, 512); err != nil {
		return false
	}

	return string(sig) == "EFI PART"
}

func readCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading certificate: %w", err)
	}

	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("certificate %s: PEM block is %q, want CERTIFICATE", path, block.Type)
		}

		der = block.Bytes
	} else if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----")) {
		return nil, fmt.Errorf("certificate %s: malformed PEM", path)
	}

	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}

	return c, nil
}

// Verification summarises every Authenticode check in the report: for a
// PE its own, for a disk every EFI binary under the ESP's EFI/. checked is
// false when Inspect was given no certificate; ok is true only when every
// binary verified (and there was at least one).
func (r *Report) Verification() (checked, ok bool, failures []string) {
	if r.Cert == "" {
		return false, false, nil
	}

	count := 0
	check := func(name string, p *PE, readErr string) {
		count++

		switch {
		case readErr != "":
			failures = append(failures, fmt.Sprintf("%s: %s", name, readErr))
		case p == nil || p.Verification == nil:
			failures = append(failures, fmt.Sprintf("%s: not verified", name))
		case !p.Verification.Verified:
			failures = append(failures, fmt.Sprintf("%s: %s", name, p.Verification.Error))
		}
	}

	if r.PE != nil {
		check(r.Path, r.PE, "")
	}

	if r.Disk != nil && r.Disk.ESP != nil {
		for _, b := range r.Disk.ESP.Binaries {
			check(b.Path, b.PE, b.Error)
		}

		for _, a := range r.Disk.ESP.AuthVars {
			if a.ListsCert != nil && !*a.ListsCert {
				failures = append(failures, fmt.Sprintf("%s: does not enroll %s, so firmware would refuse binaries it signed", a.Path, r.Cert))
			}
		}
	}

	if count == 0 {
		failures = append(failures, r.Path+": no EFI binaries to verify (no ESP, or nothing under EFI/)")
	}

	failures = append(failures, r.PCRFailures()...)

	return true, len(failures) == 0, failures
}

// PCRFailures lists, for the PE or every EFI binary on the disk, the .pcrsig
// entries that do not verify or do not match the binary's own sections.
// These need no certificate: the UKI carries both the policy and its key.
func (r *Report) PCRFailures() []string {
	var out []string

	add := func(name string, p *PE) {
		if p == nil {
			return
		}

		for _, f := range p.PCRPolicyFailures() {
			out = append(out, name+": "+f)
		}
	}

	add(r.Path, r.PE)

	if r.Disk != nil && r.Disk.ESP != nil {
		for _, b := range r.Disk.ESP.Binaries {
			add(b.Path, b.PE)
		}
	}

	return out
}
