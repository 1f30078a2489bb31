package addons

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"

	"github.com/labfleet/labfleet/lab/labos/sysinit"
	"github.com/labfleet/labfleet/lab/nodeapi"
)

// CacheMountPoint is where Talos mounts the IMAGECACHE volume (machinery
// constants.ImageCacheDiskMountPoint); labos mounts it there too.
const CacheMountPoint = "/system/imagecache/disk"

// MountCache mounts the IMAGECACHE partition (ext4, as Talos formats it)
// read-only at CacheMountPoint; an already mounted one is fine.
func MountCache(device string) error {
	m := sysinit.Mount{
		Source: device, Target: CacheMountPoint, FSType: "ext4",
		Flags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC,
	}

	if err := m.Do(); err != nil {
		return fmt.Errorf("mounting image cache: %w", err)
	}

	return nil
}

// CacheName is the directory under manifests/ where Talos's image cache
// registry looks an image up: its full name, Docker Hub's under docker.io
// (Talos parses references with the distribution library, which names
// Docker Hub docker.io), a registry port written _port_ (its
// handleRegistryWithPort, for FAT).
func CacheName(ref name.Reference) string {
	repo := ref.Context()
	reg := repo.RegistryStr()

	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}

	if host, port, ok := strings.Cut(reg, ":"); ok {
		reg = host + "_" + port + "_"
	}

	return reg + "/" + repo.RepositoryStr()
}

// CachedDigests resolves image references in a Talos image cache tree
// (the IMAGECACHE filesystem root) the way Talos's image cache registry
// does (internal/app/machined/pkg/system/services/registry: a tag is
// manifests/<name>/reference/<tag>; its sha256 names
// manifests/<name>/digest/sha256-<hex>, which must hold the same bytes), and
// checks the manifest's config and layers are in blob/. A reference by
// digest (name@sha256:..., name:tag@sha256:...) is looked up by its digest
// file, whose bytes must hash to it. It maps each reference found complete
// to its manifest digest; others are left out (Uncached lists them).
func CachedDigests(cache fs.FS, refs []string) map[string]string {
	out := map[string]string{}

	for _, r := range refs {
		if d, ok := cachedDigest(cache, r); ok {
			out[r] = d
		}
	}

	return out
}

func cachedDigest(cache fs.FS, r string) (string, bool) {
	ref, err := name.ParseReference(r)
	if err != nil {
		return "", false
	}

	dir := path.Join("manifests", CacheName(ref))

	var manifest []byte

	switch ref := ref.(type) {
	case name.Digest:
		manifest, err = fs.ReadFile(cache, path.Join(dir, "digest", strings.Replace(ref.DigestStr(), "sha256:", "sha256-", 1)))
	case name.Tag:
		manifest, err = fs.ReadFile(cache, path.Join(dir, "reference", ref.TagStr()))
	}

	if err != nil || manifest == nil {
		return "", false
	}

	sum := sha256.Sum256(manifest)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	if d, ok := ref.(name.Digest); ok && d.DigestStr() != digest {
		return "", false
	}

	byDigest, err := fs.ReadFile(cache, path.Join(dir, "digest", strings.Replace(digest, "sha256:", "sha256-", 1)))
	if err != nil || !bytes.Equal(manifest, byDigest) || !blobsPresent(cache, manifest) {
		return "", false
	}

	return digest, true
}

// Uncached lists the references of refs that cached (CachedDigests) lacks.
func Uncached(refs []string, cached map[string]string) []string {
	var out []string

	for _, r := range refs {
		if _, ok := cached[r]; !ok {
			out = append(out, r)
		}
	}

	return out
}

// blobsPresent reports whether every blob an image manifest names is in blob/.
func blobsPresent(cache fs.FS, manifest []byte) bool {
	var m struct {
		Config struct {
			Digest string `json:"digest"`
		} `json:"config"`
		Layers []struct {
			Digest string `json:"digest"`
		} `json:"layers"`
	}

	if err := json.Unmarshal(manifest, &m); err != nil || m.Config.Digest == "" {
		return false
	}

	digests := []string{m.Config.Digest}
	for _, l := range m.Layers {
		digests = append(digests, l.Digest)
	}

	for _, d := range digests {
		if _, err := fs.Stat(cache, path.Join("blob", strings.Replace(d, "sha256:", "sha256-", 1))); err != nil {
			return false
		}
	}

	return true
}

// Images lists the add-ons' image references (for CachedDigests).
func Images(as []nodeapi.Addon) []string {
	var out []string

	for _, a := range as {
		out = append(out, a.Images...)
	}

	return out
}
