// Package luks drives cryptsetup for the STATE volume: LUKS2 format with a
// TPM-sealed random key, token import/export, open and close.
package luks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// MinPBKDF2Iterations is cryptsetup's floor for pbkdf2.
const MinPBKDF2Iterations = 1000

// ErrKeyRejected means no keyslot accepted the passphrase.
var ErrKeyRejected = errors.New("no keyslot accepted the key")

// Cryptsetup runs the cryptsetup binary.
type Cryptsetup struct {
	// Bin is the cryptsetup path; empty means "cryptsetup" from PATH.
	Bin string
}

func (c Cryptsetup) bin() string {
	if c.Bin == "" {
		return "cryptsetup"
	}

	return c.Bin
}

// FormatArgs is the luksFormat command line for a key arriving on stdin.
//
// The keyslot's KDF is pbkdf2 at cryptsetup's minimum iteration count, on
// purpose: the key is 32 random bytes unsealed from the TPM, so there is
// nothing for a slow or memory-hard KDF to protect against brute force,
// while argon2id sized for real hardware costs minutes and up to 1 GiB
// under the lab's emulated CPU (TCG). A human passphrase slot would keep a
// strong KDF.
func FormatArgs(device string) []string {
	return []string{
		"luksFormat", "--batch-mode",
		"--type", "luks2",
		"--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", strconv.Itoa(MinPBKDF2Iterations),
		"--key-slot", "0",
		"--key-file=-",
		device,
	}
}

// OpenArgs is the open command line for a key arriving on stdin.
func OpenArgs(device, name string) []string {
	return []string{"open", "--type", "luks2", "--key-file=-", device, name}
}

// TokenImportArgs imports a token JSON from stdin as token id and binds it to keyslot.
func TokenImportArgs(device string, id, keyslot int) []string {
	return []string{"token", "import", "--token-id", strconv.Itoa(id), "--key-slot", strconv.Itoa(keyslot), "--json-file=-", device}
}

// TokenExportArgs exports token id as JSON on stdout.
func TokenExportArgs(device string, id int) []string {
	return []string{"token", "export", "--token-id", strconv.Itoa(id), device}
}

func (c Cryptsetup) run(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.bin(), args...)

	var stdout, stderr bytes.Buffer

	cmd.Stdout = &stdout
	cmd.Stderr = &stderr

	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}

	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 2 && args[0] == "open" {
			return nil, ErrKeyRejected
		}

		return nil, fmt.Errorf("cryptsetup %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}

	return stdout.Bytes(), nil
}

// IsLUKS reports whether device carries a LUKS header. A LUKS magic at the
// start answers in-process; anything else asks cryptsetup (which also finds
// a LUKS2 volume by its secondary header: answering "not LUKS" wrongly
// would let a first boot format over it).
func (c Cryptsetup) IsLUKS(ctx context.Context, device string) (bool, error) {
	if ok, err := hasLUKSMagic(device); err == nil && ok {
		return true, nil
	}

	cmd := exec.CommandContext(ctx, c.bin(), "isLuks", device)

	err := cmd.Run()
	if err == nil {
		return true, nil
	}

	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false, nil
	}

	return false, fmt.Errorf("cryptsetup isLuks: %w", err)
}

// Format creates a LUKS2 header with key in keyslot 0.
func (c Cryptsetup) Format(ctx context.Context, device string, key []byte) error {
	_, err := c.run(ctx, key, FormatArgs(device)...)

	return err
}

// ImportToken stores a token JSON document as token id bound to keyslot.
func (c Cryptsetup) ImportToken(ctx context.Context, device string, id, keyslot int, token []byte) error {
	_, err := c.run(ctx, token, TokenImportArgs(device, id, keyslot)...)

	return err
}

// ExportToken reads token id: from a LUKS2 primary header whose checksum
// verifies, in-process; from anything else, with cryptsetup.
func (c Cryptsetup) ExportToken(ctx context.Context, device string, id int) ([]byte, error) {
	tok, err := readTokenJSON(device, id)
	if err == nil || errors.Is(err, ErrNoToken) {
		return tok, err
	}

	return c.run(ctx, nil, TokenExportArgs(device, id)...)
}

// Open maps device as /dev/mapper/name with key.
func (c Cryptsetup) Open(ctx context.Context, device, name string, key []byte) (string, error) {
	if _, err := c.run(ctx, key, OpenArgs(device, name)...); err != nil {
		return "", err
	}

	return filepath.Join("/dev/mapper", name), nil
}

// Close unmaps name.
func (c Cryptsetup) Close(ctx context.Context, name string) error {
	_, err := c.run(ctx, nil, "close", name)

	return err
}
