package addons

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/siderolabs/talos/pkg/imager/cache"
)

// TalosCachePlatform is the platform the image cache holds (the lab and the
// fleet run linux/amd64 only).
const TalosCachePlatform = "linux/amd64"

// talosCacheMu serialises WriteTalosCache: Talos's cache writer prints its
// progress to os.Stderr, which is swapped for the duration.
var talosCacheMu sync.Mutex

// WriteTalosCache writes the images of the OCI layout at ociDir into dst (a
// directory that must not exist or be empty) in Talos's image cache format,
// with Talos's own writer (pkg/imager/cache.Generate, flat): blob/sha256-<hex>
// for every config and layer, stored once however many images share it, and
// each manifest under manifests/<name>/digest/sha256-<hex> and
// manifests/<name>/reference/<tag>, <name> being the image's full name as
// Talos's registry resolves it (quay.io/cilium/cilium, docker.io/library/x).
// This tree is the root of the IMAGECACHE filesystem.
//
// Talos's writer pulls from registries only, so the layout is served on a
// loopback registry for the duration under repositories named by each
// image's full name; the registry's host directory is then dropped, which
// leaves the names the images have upstream. Image names come from the
// layout's io.containerd.image.name annotations.
func WriteTalosCache(ctx context.Context, ociDir, dst string) error {
	p, err := layout.FromPath(ociDir)
	if err != nil {
		return fmt.Errorf("opening image cache: %w", err)
	}

	idx, err := p.ImageIndex()
	if err != nil {
		return fmt.Errorf("reading image cache index: %w", err)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("reading image cache index: %w", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("serving the image cache to Talos's cache writer: %w", err)
	}

	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}

	go srv.Serve(ln) //nolint:errcheck

	defer srv.Close() //nolint:errcheck

	host := ln.Addr().String()
	refs := make([]string, 0, len(im.Manifests))

	for _, d := range im.Manifests {
		refName := d.Annotations[AnnotationContainerName]

		tag, err := name.NewTag(refName)
		if err != nil {
			return fmt.Errorf("image cache entry %s: name %q: %w", d.Digest, refName, err)
		}

		local, err := name.NewTag(host+"/"+TalosCacheName(tag)+":"+tag.TagStr(), name.Insecure)
		if err != nil {
			return fmt.Errorf("image cache entry %s: %w", refName, err)
		}

		img, err := p.Image(d.Digest)
		if err != nil {
			return fmt.Errorf("image cache entry %s: %w", refName, err)
		}

		if err := remote.Write(local, img, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("image cache entry %s: serving it: %w", refName, err)
		}

		refs = append(refs, local.String())
	}

	if err := generateQuietly(refs, dst); err != nil {
		return fmt.Errorf("writing Talos image cache: %w", err)
	}

	// Talos's writer names the registry directory host_port_ (its
	// rewriteRegistry, for FAT); the full names are one level below it.
	hostDir := filepath.Join(dst, "manifests", strings.Replace(host, ":", "_", 1)+"_")

	entries, err := os.ReadDir(hostDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("writing Talos image cache: %w", err)
	}

	for _, e := range entries {
		if err := os.Rename(filepath.Join(hostDir, e.Name()), filepath.Join(dst, "manifests", e.Name())); err != nil {
			return fmt.Errorf("writing Talos image cache: %w", err)
		}
	}

	if err := os.RemoveAll(hostDir); err != nil {
		return fmt.Errorf("writing Talos image cache: %w", err)
	}

	return nil
}

// TalosCacheName is the directory under manifests/ that Talos's image cache
// registry looks an image up in: its full repository name, Docker Hub's
// under docker.io (as Talos's registry parses references).
func TalosCacheName(ref name.Reference) string {
	repo := ref.Context()
	if repo.RegistryStr() == name.DefaultRegistry {
		return "docker.io/" + repo.RepositoryStr()
	}

	return repo.Name()
}

// generateQuietly runs Talos's cache writer with os.Stderr (where it prints
// every image and layer) pointed at /dev/null: library code stays silent.
func generateQuietly(refs []string, dst string) error {
	talosCacheMu.Lock()
	defer talosCacheMu.Unlock()

	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer null.Close() //nolint:errcheck

	old := os.Stderr
	os.Stderr = null

	defer func() { os.Stderr = old }()

	// insecure: the loopback registry speaks plain HTTP; no layer cache;
	// flat: the tree itself, not wrapped in an OCI image; no signatures.
	return cache.Generate(refs, []string{TalosCachePlatform}, true, "", dst, true, false)
}
