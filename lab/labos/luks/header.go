package luks

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// Reading the LUKS2 header in-process saves labos a cryptsetup run per
// question at every boot (isLuks, token export, and token export again for
// the start-the-world check): each run loads cryptsetup, libcryptsetup and
// libcrypto, which costs about 0.3 s under the lab's emulated CPU. Anything
// unusual (a primary header that does not verify, a LUKS1 header) is left
// to cryptsetup, which also knows the secondary header.

// LUKS2 binary header layout (cryptsetup's docs/on-disk-format-luks2.pdf).
const (
	hdrBinSize   = 4096
	hdrMagicLen  = 6
	hdrCsumAlgAt = 72
	hdrCsumAt    = 448
	hdrCsumLen   = 64
	maxHdrSize   = 4 << 20 // cryptsetup's largest metadata area
)

var luksMagic = []byte("LUKS\xba\xbe")

// errNotSimple means the in-process reader leaves this header to cryptsetup.
var errNotSimple = errors.New("header left to cryptsetup")

// ErrNoToken: the header verified and has no token of that id.
var ErrNoToken = errors.New("no such LUKS2 token")

// hasLUKSMagic reports whether device starts with a LUKS (1 or 2) magic
// and version, what cryptsetup isLuks checks first.
func hasLUKSMagic(device string) (bool, error) {
	f, err := os.Open(device)
	if err != nil {
		return false, fmt.Errorf("reading LUKS header of %s: %w", device, err)
	}
	defer f.Close() //nolint:errcheck

	var b [8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return false, nil //nolint:nilerr // shorter than a header: not LUKS
	}

	v := binary.BigEndian.Uint16(b[hdrMagicLen:])

	return bytes.Equal(b[:hdrMagicLen], luksMagic) && (v == 1 || v == 2), nil
}

// readTokenJSON returns token id of a LUKS2 device's primary header, after
// checking the header's sha256 checksum; ErrNoToken when it has none of
// that id; any other error means cryptsetup should be asked instead.
func readTokenJSON(device string, id int) ([]byte, error) {
	f, err := os.Open(device)
	if err != nil {
		return nil, fmt.Errorf("reading LUKS header of %s: %w", device, err)
	}
	defer f.Close() //nolint:errcheck

	bin := make([]byte, hdrBinSize)
	if _, err := io.ReadFull(f, bin); err != nil {
		return nil, fmt.Errorf("%w: %w", errNotSimple, err)
	}

	if !bytes.Equal(bin[:hdrMagicLen], luksMagic) || binary.BigEndian.Uint16(bin[hdrMagicLen:]) != 2 {
		return nil, fmt.Errorf("%w: no LUKS2 primary header", errNotSimple)
	}

	size := binary.BigEndian.Uint64(bin[8:])
	if size <= hdrBinSize || size > maxHdrSize {
		return nil, fmt.Errorf("%w: header size %d", errNotSimple, size)
	}

	if alg := string(bytes.TrimRight(bin[hdrCsumAlgAt:hdrCsumAlgAt+32], "\x00")); alg != "sha256" {
		return nil, fmt.Errorf("%w: checksum %q", errNotSimple, alg)
	}

	hdr := make([]byte, size)
	copy(hdr, bin)

	if _, err := io.ReadFull(f, hdr[hdrBinSize:]); err != nil {
		return nil, fmt.Errorf("%w: %w", errNotSimple, err)
	}

	want := bytes.Clone(hdr[hdrCsumAt : hdrCsumAt+sha256.Size])
	clear(hdr[hdrCsumAt : hdrCsumAt+hdrCsumLen])

	got := sha256.Sum256(hdr)
	if subtle.ConstantTimeCompare(got[:], want) != 1 {
		return nil, fmt.Errorf("%w: primary header checksum does not match", errNotSimple)
	}

	area := hdr[hdrBinSize:]
	if i := bytes.IndexByte(area, 0); i >= 0 {
		area = area[:i]
	}

	var meta struct {
		Tokens map[string]json.RawMessage `json:"tokens"`
	}

	if err := json.Unmarshal(area, &meta); err != nil {
		return nil, fmt.Errorf("%w: metadata: %w", errNotSimple, err)
	}

	tok, ok := meta.Tokens[strconv.Itoa(id)]
	if !ok {
		return nil, fmt.Errorf("%s: token %d: %w", device, id, ErrNoToken)
	}

	return tok, nil
}
