package keys

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/foxboron/go-uefi/efi/signature"
	"github.com/foxboron/go-uefi/efi/util"
	"github.com/foxboron/go-uefi/efivar"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"go.yaml.in/yaml/v4"
)

// GenerateOptions tunes Generate. The zero value is usable.
type GenerateOptions struct {
	// CommonName prefixes every certificate subject ("<name> UKI signing",
	// "<name> PK", ...) and names the cluster/context in talosconfig.
	// Default "labfleet".
	CommonName string
	// Force replaces keys already in the directory. Without it Generate
	// returns ErrExists and touches nothing.
	Force bool
	// Now is the certificates' and secrets' issue time; zero means time.Now.
	Now time.Time
	// Validity is how long certificates stay valid. Default 10 years
	// (firmware ignores expiry, but tools such as sbverify print it).
	Validity time.Duration
	// TalosVersion selects the machinery version contract for secrets.yaml
	// ("v1.14"); empty means the contract of the linked machinery.
	TalosVersion string
	// Endpoints are the talosconfig endpoints. Default 127.0.0.1, where the
	// lab forwards each VM's API port.
	Endpoints []string
	// Token, with PKCS11, creates the UKI, PCR, PK and KEK keys inside a
	// PKCS#11 token (non-extractable) instead of key files: the folder gets
	// only certificates, .auth files, the Talos secrets and PKCS11File.
	Token  KeyMaker
	PKCS11 *PKCS11
}

// KeyMaker creates an RSA key pair somewhere private keys do not leave
// (images/keys/hsm: a PKCS#11 token), labelled label.
type KeyMaker interface {
	GenerateRSA(label string, bits int) (crypto.Signer, error)
}

func (o *GenerateOptions) defaults() {
	if o.CommonName == "" {
		o.CommonName = "labfleet"
	}

	if o.Now.IsZero() {
		o.Now = time.Now()
	}

	if o.Validity == 0 {
		o.Validity = 10 * 365 * 24 * time.Hour
	}

	if len(o.Endpoints) == 0 {
		o.Endpoints = []string{"127.0.0.1"}
	}
}

// PreviousSuffix names the folder Generate keeps the replaced set in
// (DIR.previous) when Force replaces an existing one.
const PreviousSuffix = ".previous"

// exchangeDirs is exchange; tests replace it to fail the swap or to take
// the two-rename path.
var exchangeDirs = exchange

// writeHook, when set (tests), runs before each file of a new set is
// written; an error aborts Generate as a failed write would.
var writeHook func(name string) error

// Generate writes a complete keys directory into dir (created if missing)
// and returns the loaded set.
//
// Everything is written (and fsynced) into a temporary directory beside dir
// first; only a complete set is moved into place, by renaming directories,
// never file by file: an interrupted or failed run leaves the old set (or
// nothing) and never a mix. With opts.Force an existing set is swapped out
// whole and kept as dir+PreviousSuffix (replacing an older one there);
// other files of dir move with the new set. Without Force existing keys
// are never touched.
func Generate(dir string, opts GenerateOptions) (_ *Set, err error) {
	opts.defaults()

	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}

	existing, err := existingFiles(dir)
	if err != nil {
		return nil, err
	}

	if len(existing) > 0 && !opts.Force {
		return nil, fmt.Errorf("%s already holds %s: %w; pass --force to replace them (images signed with the old keys stop booting on nodes enrolled with the new ones)",
			dir, strings.Join(existing, ", "), ErrExists)
	}

	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("creating parent of keys directory: %w", err)
	}

	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("creating temporary keys directory: %w", err)
	}

	// tmp is removed unless it holds the old set (see errOldSetInTmp).
	defer func() {
		if !errors.Is(err, errOldSetInTmp) {
			os.RemoveAll(tmp) //nolint:errcheck
		}
	}()

	files, err := generateFiles(opts)
	if err != nil {
		return nil, err
	}

	names := allFiles
	if opts.Token != nil {
		names = append([]string{PKCS11File}, slices.DeleteFunc(slices.Clone(allFiles), func(n string) bool { return slices.Contains(pkcs11Private, n) })...)
	}

	for _, name := range names {
		mode := fs.FileMode(0o644)
		if privateFiles[name] {
			mode = 0o600
		}

		if writeHook != nil {
			if err := writeHook(name); err != nil {
				return nil, fmt.Errorf("writing %s: %w", name, err)
			}
		}

		if err := writeFileSync(filepath.Join(tmp, name), files[name], mode); err != nil {
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
	}

	if err := swapInto(tmp, dir); err != nil {
		return nil, err
	}

	return Load(dir)
}

// existingFiles lists which key files dir already holds.
func existingFiles(dir string) ([]string, error) {
	var found []string

	for _, name := range allFiles {
		_, err := os.Lstat(filepath.Join(dir, name))

		switch {
		case err == nil:
			found = append(found, name)
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("checking keys directory: %w", err)
		}
	}

	return found, nil
}

// errNoExchange means the platform or file system cannot swap two
// directories in one rename.
var errNoExchange = errors.New("atomic directory exchange not supported")

// errOldSetInTmp marks the one failure after which the temporary folder
// holds the old set, so Generate must not remove it.
var errOldSetInTmp = errors.New("old keys left in the temporary folder")

// swapInto puts the finished set tmp in place of dir. A missing or empty
// dir is replaced by one rename. Otherwise the files of dir that are not
// part of a set are copied into tmp, an older dir.previous is removed, and
// the folders are swapped in one atomic rename (Linux renameat2
// RENAME_EXCHANGE) before the old set is renamed to dir.previous: dir is
// always either the complete old set or the complete new one. Where the
// exchange is not supported, two renames are used (dir -> dir.previous,
// tmp -> dir): an interruption between them leaves dir absent and the old
// set complete in dir.previous, still never a mix.
func swapInto(tmp, dir string) error {
	if err := os.Chmod(tmp, 0o700); err != nil {
		return err
	}

	entries, err := os.ReadDir(dir)

	switch {
	case errors.Is(err, fs.ErrNotExist) || (err == nil && len(entries) == 0):
		if err == nil {
			if err := os.Remove(dir); err != nil {
				return fmt.Errorf("replacing empty keys directory: %w", err)
			}
		}

		if err := os.Rename(tmp, dir); err != nil {
			return fmt.Errorf("moving keys into place: %w", err)
		}

		return syncDir(filepath.Dir(dir))
	case err != nil:
		return fmt.Errorf("reading keys directory: %w", err)
	}

	for _, e := range entries {
		if slices.Contains(allFiles, e.Name()) || !e.Type().IsRegular() {
			continue
		}

		if err := copyRegular(filepath.Join(dir, e.Name()), filepath.Join(tmp, e.Name())); err != nil {
			return fmt.Errorf("keeping %s: %w", e.Name(), err)
		}
	}

	prev := dir + PreviousSuffix
	if err := os.RemoveAll(prev); err != nil {
		return fmt.Errorf("removing the older %s: %w", prev, err)
	}

	switch err := exchangeDirs(tmp, dir); {
	case err == nil:
		// tmp now holds the old set.
		if err := os.Rename(tmp, prev); err != nil {
			return fmt.Errorf("keeping the old keys as %s: %w (they are in %s): %w", prev, err, tmp, errOldSetInTmp)
		}

		return syncDir(filepath.Dir(dir))
	case !errors.Is(err, errNoExchange):
		return fmt.Errorf("swapping keys into place: %w", err)
	}

	if err := os.Rename(dir, prev); err != nil {
		return fmt.Errorf("moving the old keys to %s: %w", prev, err)
	}

	if err := os.Rename(tmp, dir); err != nil {
		// Put the old set back: dir must not stay empty.
		if rerr := os.Rename(prev, dir); rerr != nil {
			return fmt.Errorf("moving keys into place: %w (and restoring %s failed: %v)", err, prev, rerr)
		}

		return fmt.Errorf("moving keys into place: %w", err)
	}

	return syncDir(filepath.Dir(dir))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close() //nolint:errcheck

	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}

	return nil
}

func copyRegular(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}

	st, err := os.Stat(src)
	if err != nil {
		return err
	}

	return writeFileSync(dst, data, st.Mode().Perm())
}

func writeFileSync(path string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}

	if _, err := f.Write(data); err != nil {
		f.Close() //nolint:errcheck

		return err
	}

	if err := f.Sync(); err != nil {
		f.Close() //nolint:errcheck

		return err
	}

	return f.Close()
}

type keyPair struct {
	key  crypto.Signer
	cert *x509.Certificate
}

// generateFiles makes the contents of every file of a set, in memory.
func generateFiles(opts GenerateOptions) (map[string][]byte, error) {
	files := map[string][]byte{}

	if (opts.Token == nil) != (opts.PKCS11 == nil) {
		return nil, errors.New("generating keys in a token needs both Token and PKCS11")
	}

	uki, err := newSelfSigned(opts, opts.labelOf("uki"), UKISigningKeyBits, opts.CommonName+" UKI signing",
		x509.KeyUsageDigitalSignature, []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning})
	if err != nil {
		return nil, fmt.Errorf("generating UKI signing key: %w", err)
	}

	pcr, err := opts.newKey(opts.labelOf("pcr"), PCRSigningKeyBits)
	if err != nil {
		return nil, fmt.Errorf("generating PCR signing key: %w", err)
	}

	pk, err := newSelfSigned(opts, opts.labelOf("pk"), OwnerKeyBits, opts.CommonName+" PK", x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign, nil)
	if err != nil {
		return nil, fmt.Errorf("generating PK: %w", err)
	}

	kek, err := newSelfSigned(opts, opts.labelOf("kek"), OwnerKeyBits, opts.CommonName+" KEK", x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign, nil)
	if err != nil {
		return nil, fmt.Errorf("generating KEK: %w", err)
	}

	files[UKISigningCertFile] = encodeCert(uki.cert.Raw)
	files[PKCertFile] = encodeCert(pk.cert.Raw)
	files[KEKCertFile] = encodeCert(kek.cert.Raw)

	if opts.Token != nil {
		cfg, err := json.MarshalIndent(opts.PKCS11, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encoding %s: %w", PKCS11File, err)
		}

		files[PKCS11File] = append(cfg, '\n')
	} else {
		files[UKISigningKeyFile] = encodePKCS1(uki.key.(*rsa.PrivateKey))
		files[PCRSigningKeyFile] = encodePKCS1(pcr.(*rsa.PrivateKey))
		files[PKKeyFile] = encodePKCS1(pk.key.(*rsa.PrivateKey))
		files[KEKKeyFile] = encodePKCS1(kek.key.(*rsa.PrivateKey))
	}

	// The usual owner chain: PK signs itself and KEK, KEK signs db.
	for _, v := range []struct {
		name   string
		v      efivar.Efivar
		cert   *x509.Certificate
		signer keyPair
	}{
		{PKAuthFile, efivar.PK, pk.cert, pk},
		{KEKAuthFile, efivar.KEK, kek.cert, pk},
		{DBAuthFile, efivar.Db, uki.cert, kek},
	} {
		b, err := signedVariable(v.v, v.cert, v.signer)
		if err != nil {
			return nil, fmt.Errorf("signing %s: %w", v.name, err)
		}

		files[v.name] = b
	}

	secretsYAML, talosconfig, err := machineSecrets(opts)
	if err != nil {
		return nil, err
	}

	files[SecretsFile] = secretsYAML
	files[TalosconfigFile] = talosconfig

	return files, nil
}

// labelOf is the token label of a role's key, from PKCS11 ("uki", "pcr",
// "pk", "kek").
func (o *GenerateOptions) labelOf(role string) string {
	if o.PKCS11 == nil {
		return ""
	}

	return map[string]string{"uki": o.PKCS11.UKIKeyLabel, "pcr": o.PKCS11.PCRKeyLabel, "pk": o.PKCS11.PKKeyLabel, "kek": o.PKCS11.KEKKeyLabel}[role]
}

// newKey makes an RSA key in the token (label) or in memory.
func (o *GenerateOptions) newKey(label string, bits int) (crypto.Signer, error) {
	if o.Token != nil {
		return o.Token.GenerateRSA(label, bits)
	}

	return rsa.GenerateKey(rand.Reader, bits)
}

func newSelfSigned(opts GenerateOptions, label string, bits int, cn string, usage x509.KeyUsage, ext []x509.ExtKeyUsage) (keyPair, error) {
	key, err := opts.newKey(label, bits)
	if err != nil {
		return keyPair{}, err
	}

	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return keyPair{}, err
	}

	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		// Backdated an hour so a VM whose RTC lags the host still sees a valid cert.
		NotBefore:             opts.Now.Add(-time.Hour).UTC(),
		NotAfter:              opts.Now.Add(opts.Validity).UTC(),
		KeyUsage:              usage,
		ExtKeyUsage:           ext,
		BasicConstraintsValid: true,
		IsCA:                  usage&x509.KeyUsageCertSign != 0,
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return keyPair{}, err
	}

	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return keyPair{}, err
	}

	return keyPair{key: key, cert: cert}, nil
}

// signedVariable builds the EFI_VARIABLE_AUTHENTICATION_2 update that sets
// variable v to a signature database holding cert.
func signedVariable(v efivar.Efivar, cert *x509.Certificate, signer keyPair) ([]byte, error) {
	var owner [16]byte
	if _, err := rand.Read(owner[:]); err != nil {
		return nil, err
	}

	db := signature.NewSignatureDatabase()
	if err := db.Append(signature.CERT_X509_GUID, *util.BytesToGUID(owner[:]), cert.Raw); err != nil {
		return nil, err
	}

	_, signed, err := signature.SignEFIVariable(v, db, signer.key, signer.cert)
	if err != nil {
		return nil, err
	}

	return signed.Bytes(), nil
}

// machineSecrets makes the Talos secrets bundle and an os:admin client
// config signed by its machine CA.
func machineSecrets(opts GenerateOptions) (secretsYAML, talosconfig []byte, err error) {
	var contract *config.VersionContract

	if opts.TalosVersion != "" {
		contract, err = config.ParseContractFromVersion(opts.TalosVersion)
		if err != nil {
			return nil, nil, fmt.Errorf("talos version %q: %w", opts.TalosVersion, err)
		}
	}

	bundle, err := secrets.NewBundle(secrets.NewFixedClock(opts.Now), contract)
	if err != nil {
		return nil, nil, fmt.Errorf("generating machine secrets: %w", err)
	}

	secretsYAML, err = yaml.Marshal(bundle)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding machine secrets: %w", err)
	}

	in, err := generate.NewInput(opts.CommonName, "https://"+opts.Endpoints[0]+":6443", constants.DefaultKubernetesVersion,
		generate.WithSecretsBundle(bundle),
		generate.WithEndpointList(slices.Clone(opts.Endpoints)),
		generate.WithVersionContract(contract),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("preparing talosconfig: %w", err)
	}

	tc, err := in.Talosconfig()
	if err != nil {
		return nil, nil, fmt.Errorf("generating talosconfig: %w", err)
	}

	talosconfig, err = tc.Bytes()
	if err != nil {
		return nil, nil, fmt.Errorf("encoding talosconfig: %w", err)
	}

	return secretsYAML, talosconfig, nil
}
