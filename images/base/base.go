// Package base resolves a build's base (Talos's imager image, or the lab base
// in the same layout) by digest and extracts the boot inputs from it.
package base

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Arch is the only architecture the lab and fleet run.
const Arch = "amd64"

// File names inside usr/install/<arch>/ of Talos's imager image.
const (
	Kernel    = "vmlinuz"
	Initramfs = "initramfs.xz"
	SDStub    = "systemd-stub.efi"
	SDBoot    = "systemd-boot.efi"
)

// Inputs are the files a UKI build needs.
var Inputs = []string{Kernel, Initramfs, SDStub, SDBoot}

// ErrDigestMismatch means the base resolved to another digest than the pinned one.
var ErrDigestMismatch = errors.New("base digest does not match the pinned digest")

// Source says where a base comes from: exactly one of Image or Layout.
type Source struct {
	Image    string // OCI reference
	Layout   string // OCI layout directory
	Digest   string // optional pin, sha256:...
	Insecure bool   // allow plain HTTP (base.insecure in the definition)
	Registry Registry
}

// Registry is how imagectl talks to registries: as the user's docker,
// crane or podman would. Credentials come from the Docker config keychain
// (authn.DefaultKeychain: $DOCKER_CONFIG/config.json, credential helpers),
// TLS is verified against the system roots, and plain HTTP is used only for
// the hosts listed in Insecure.
type Registry struct {
	// Insecure lists registry hosts (host or host:port) allowed over plain
	// HTTP (--insecure-registry).
	Insecure []string
	// Keychain overrides authn.DefaultKeychain.
	Keychain authn.Keychain
	// Transport overrides remote.DefaultTransport (e.g. for a private CA).
	Transport http.RoundTripper
}

// NameOptions are the reference parsing options for ref: name.Insecure
// only when its registry is listed, or insecure is set.
func (r Registry) NameOptions(ref string, insecure bool) []name.Option {
	if insecure {
		return []name.Option{name.Insecure}
	}

	if parsed, err := name.ParseReference(ref); err == nil {
		host := parsed.Context().RegistryStr()
		for _, h := range r.Insecure {
			if h == host {
				return []name.Option{name.Insecure}
			}
		}
	}

	return nil
}

// RemoteOptions are the options every registry call takes.
func (r Registry) RemoteOptions(ctx context.Context) []remote.Option {
	kc := r.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}

	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc)}
	if r.Transport != nil {
		opts = append(opts, remote.WithTransport(r.Transport))
	}

	return opts
}

// File is one extracted input.
type File struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Resolved is a base pinned by digest with its inputs extracted.
type Resolved struct {
	Ref    string          `json:"ref"`
	Digest string          `json:"digest"`
	Files  map[string]File `json:"files"`
}

// Describe returns the reference and manifest digest of the base without extracting it.
func Describe(ctx context.Context, src Source) (string, v1.Image, error) {
	if src.Layout != "" {
		img, err := fromLayout(src.Layout)
		if err != nil {
			return "", nil, err
		}

		return "oci-layout:" + src.Layout, img, nil
	}

	ref, err := name.ParseReference(src.Image, src.Registry.NameOptions(src.Image, src.Insecure)...)
	if err != nil {
		return "", nil, fmt.Errorf("parsing base image reference %q: %w", src.Image, err)
	}

	opts := append(src.Registry.RemoteOptions(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: Arch}))

	img, err := remote.Image(ref, opts...)
	if err != nil {
		return "", nil, fmt.Errorf("pulling base image %s: %w", src.Image, err)
	}

	return ref.String(), img, nil
}

// fromLayout picks the linux/amd64 image of an OCI layout (or its only image).
func fromLayout(dir string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("opening base OCI layout %s (base.layout; the lab base is made by `make labbase` or `labctl base build`): %w", dir, err)
	}

	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("reading base OCI layout index %s: %w", dir, err)
	}

	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading base OCI layout index %s: %w", dir, err)
	}

	var candidates []v1.Descriptor

	for _, d := range m.Manifests {
		if d.Platform != nil && (d.Platform.OS != "linux" || d.Platform.Architecture != Arch) {
			continue
		}

		candidates = append(candidates, d)
	}

	if len(candidates) == 0 {
		return nil, fmt.Errorf("base OCI layout %s has no linux/%s image", dir, Arch)
	}

	d := candidates[len(candidates)-1] // the most recently appended image wins

	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("reading nested index in %s: %w", dir, err)
		}

		return remoteIndexImage(child)
	}

	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, fmt.Errorf("reading base image %s in %s: %w", d.Digest, dir, err)
	}

	return img, nil
}

func remoteIndexImage(idx v1.ImageIndex) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}

	for _, d := range m.Manifests {
		if d.Platform == nil || (d.Platform.OS == "linux" && d.Platform.Architecture == Arch) {
			return idx.Image(d.Digest)
		}
	}

	return nil, fmt.Errorf("index has no linux/%s image", Arch)
}

// Resolve pins the base by digest and extracts its inputs into dir.
func Resolve(ctx context.Context, src Source, dir string) (*Resolved, error) {
	ref, img, err := Describe(ctx, src)
	if err != nil {
		return nil, err
	}

	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("computing base digest: %w", err)
	}

	if src.Digest != "" && src.Digest != digest.String() {
		return nil, fmt.Errorf("%w: %s resolved to %s, definition pins %s; if the new base is intended, update base.digest", ErrDigestMismatch, ref, digest, src.Digest)
	}

	files, err := Extract(img, dir)
	if err != nil {
		return nil, fmt.Errorf("extracting base %s: %w", ref, err)
	}

	return &Resolved{Ref: ref, Digest: digest.String(), Files: files}, nil
}

// Extract copies usr/install/<arch>/{inputs} out of the image's flattened
// filesystem into dir, hashing as it streams.
func Extract(img v1.Image, dir string) (map[string]File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}

	rc := mutate.Extract(img)
	defer rc.Close() //nolint:errcheck

	want := map[string]bool{}
	for _, in := range Inputs {
		want[path.Join("usr/install", Arch, in)] = true
	}

	files := map[string]File{}
	tr := tar.NewReader(rc)

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("reading image filesystem: %w", err)
		}

		p := path.Clean(hdr.Name)
		if !want[p] || hdr.Typeflag != tar.TypeReg {
			continue
		}

		base := path.Base(p)

		f, err := writeFile(filepath.Join(dir, base), tr)
		if err != nil {
			return nil, err
		}

		files[base] = f
	}

	for _, in := range Inputs {
		if _, ok := files[in]; !ok {
			return nil, fmt.Errorf("image has no usr/install/%s/%s: is it a Talos imager image (or the lab base)?", Arch, in)
		}
	}

	return files, nil
}

func writeFile(dst string, r io.Reader) (File, error) {
	out, err := os.Create(dst)
	if err != nil {
		return File{}, fmt.Errorf("creating %s: %w", dst, err)
	}

	h := sha256.New()

	n, err := io.Copy(io.MultiWriter(out, h), r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}

	if err != nil {
		return File{}, fmt.Errorf("writing %s: %w", dst, err)
	}

	return File{Path: dst, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}
