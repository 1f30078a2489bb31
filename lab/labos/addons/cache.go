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
// checks the manifest's config and layers are in blob/. It maps each
// reference found complete to its manifest digest; others are left out.
func CachedDigests(cache fs.FS, refs []string) map[string]string {
	out := map[string]string{}

	for _, r := range refs {
		tag, err := name.NewTag(r)
		if err != nil || strings.Contains(r, "@") {
			continue // by digest already, or not a tag
		}

		dir := path.Join("manifests", CacheName(tag))

		byTag, err := fs.ReadFile(cache, path.Join(dir, "reference", tag.TagStr()))
		if err != nil {
			continue
		}

		sum := sha256.Sum256(byTag)
		hexSum := hex.EncodeToString(sum[:])

		byDigest, err := fs.ReadFile(cache, path.Join(dir, "digest", "sha256-"+hexSum))
		if err != nil || !bytes.Equal(byTag, byDigest) {
			continue
		}

		if !blobsPresent(cache, byTag) {
			continue
		}

		out[r] = "sha256:" + hexSum
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
