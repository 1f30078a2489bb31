package standin

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"helm.sh/helm/v3/pkg/chart"
	helmregistry "helm.sh/helm/v3/pkg/registry"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/yaml"
)

// Layer sizes of the stand-in images: a base layer every image shares (as
// upstream images share a distroless or alpine base), a layer shared within
// a family (Cilium agent and operator) and a per-image layer.
const (
	baseLayerBytes   = 512 << 10
	familyLayerBytes = 256 << 10
	ownLayerBytes    = 64 << 10
)

// BuildImage returns the stand-in image for img; the same Image gives the
// same digest.
func BuildImage(img Image) (v1.Image, error) {
	t, err := name.NewTag(img.Ref)
	if err != nil {
		return nil, fmt.Errorf("stand-in image %q: %w", img.Ref, err)
	}

	bin := path.Base(t.RepositoryStr())

	layers := []map[string][]byte{{
		"etc/os-release":       []byte("NAME=\"labfleet stand-in base\"\nID=labfleet-standin\n"),
		"usr/lib/standin/base": filler("base", baseLayerBytes),
	}}

	if img.Family != "" {
		layers = append(layers, map[string][]byte{
			"usr/lib/" + img.Family + "/common": filler("family:"+img.Family, familyLayerBytes),
		})
	}

	layers = append(layers, map[string][]byte{
		"usr/bin/" + bin:       filler("image:"+img.Ref, ownLayerBytes),
		"etc/labfleet-standin": []byte("labfleet stand-in for " + img.Ref + "; not the upstream image\n"),
	})

	cfg := &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Config: v1.Config{
			Entrypoint: []string{"/usr/bin/" + bin},
			Labels:     map[string]string{"org.labfleet.standin": img.Ref},
		},
		RootFS: v1.RootFS{Type: "layers"},
	}

	base, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, err
	}

	base = mutate.MediaType(base, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)

	var ls []v1.Layer

	for _, files := range layers {
		tb, err := tarBytes(files)
		if err != nil {
			return nil, err
		}

		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(tb)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}

		ls = append(ls, l)
	}

	return mutate.AppendLayers(base, ls...)
}

func tarBytes(files map[string][]byte) ([]byte, error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}

	sort.Strings(names)

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)

	for _, n := range names {
		mode := int64(0o644)
		if strings.HasPrefix(n, "usr/bin/") {
			mode = 0o755
		}

		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(files[n])), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}

		if _, err := tw.Write(files[n]); err != nil {
			return nil, err
		}
	}

	if err := tw.Close(); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}

// upstreamHost splits "quay.io/cilium/cilium:v1" into "quay.io" and the rest.
func upstreamHost(ref string) (host, rest string) {
	host, rest, _ = strings.Cut(ref, "/")

	return host, rest
}

// Publish writes the catalog's images and OCI charts to the registry at
// registryHost ("127.0.0.1:5000"), each upstream host mapped to a path
// prefix: quay.io/cilium/cilium:v1 becomes registryHost/quay.io/cilium/cilium:v1.
// HTTP chart repositories cannot live in a registry; Server serves them.
func Publish(ctx context.Context, registryHost string, cat Catalog) error {
	opts := []name.Option{}
	if isLoopback(registryHost) {
		opts = append(opts, name.Insecure)
	}

	for _, img := range cat.Images {
		im, err := BuildImage(img)
		if err != nil {
			return err
		}

		host, rest := upstreamHost(img.Ref)

		dst, err := name.NewTag(registryHost+"/"+host+"/"+rest, opts...)
		if err != nil {
			return fmt.Errorf("stand-in image %s: %w", img.Ref, err)
		}

		if err := remote.Write(dst, im, remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("publishing stand-in image %s: %w", img.Ref, err)
		}
	}

	for _, c := range cat.Charts {
		if !strings.HasPrefix(c.Repository, "oci://") {
			continue
		}

		if err := pushOCIChart(registryHost, c); err != nil {
			return err
		}
	}

	return nil
}

func pushOCIChart(registryHost string, c Chart) error {
	data, err := c.Archive()
	if err != nil {
		return err
	}

	copts := []helmregistry.ClientOption{
		helmregistry.ClientOptWriter(io.Discard),
		helmregistry.ClientOptCredentialsFile("/nonexistent/labfleet-registry.json"),
	}
	if isLoopback(registryHost) {
		copts = append(copts, helmregistry.ClientOptPlainHTTP())
	}

	client, err := helmregistry.NewClient(copts...)
	if err != nil {
		return fmt.Errorf("helm registry client: %w", err)
	}

	loc := strings.TrimSuffix(strings.TrimPrefix(c.Repository, "oci://"), "/")
	ref := fmt.Sprintf("%s/%s/%s:%s", registryHost, loc, c.Name, c.Version)

	if _, err := client.Push(data, ref, helmregistry.PushOptCreationTime(epoch.Format(time.RFC3339))); err != nil {
		return fmt.Errorf("publishing stand-in chart %s: %w", ref, err)
	}

	return nil
}

// httpRepoFiles returns the files of the catalog's HTTP chart repositories,
// keyed by URL path under the mirror ("/helm.cilium.io/index.yaml").
func httpRepoFiles(cat Catalog) (map[string][]byte, error) {
	files := map[string][]byte{}
	indexes := map[string]*repo.IndexFile{}

	for _, c := range cat.Charts {
		if strings.HasPrefix(c.Repository, "oci://") {
			continue
		}

		u, err := url.Parse(c.Repository)
		if err != nil {
			return nil, fmt.Errorf("stand-in chart %s: %w", c.Name, err)
		}

		prefix := "/" + strings.Trim(u.Host+u.Path, "/")

		data, err := c.Archive()
		if err != nil {
			return nil, err
		}

		file := fmt.Sprintf("%s-%s.tgz", c.Name, c.Version)
		files[prefix+"/"+file] = data

		idx := indexes[prefix]
		if idx == nil {
			idx = &repo.IndexFile{APIVersion: "v1", Generated: epoch, Entries: map[string]repo.ChartVersions{}}
			indexes[prefix] = idx
		}

		sum := sha256.Sum256(data)

		idx.Entries[c.Name] = append(idx.Entries[c.Name], &repo.ChartVersion{
			Metadata: &chart.Metadata{APIVersion: "v2", Name: c.Name, Version: c.Version, AppVersion: c.AppVersion, Type: "application"},
			// Absolute upstream URLs, as real indexes often use, so the
			// mirror mapping is exercised for the archive too.
			URLs:    []string{strings.TrimSuffix(c.Repository, "/") + "/" + file},
			Created: epoch,
			Digest:  hex.EncodeToString(sum[:]),
		})
	}

	for prefix, idx := range indexes {
		idx.SortEntries()

		b, err := yaml.Marshal(idx)
		if err != nil {
			return nil, err
		}

		files[prefix+"/index.yaml"] = b
	}

	return files, nil
}

// Server is a stand-in mirror: an in-process OCI registry (images and OCI
// charts) and the HTTP chart repositories, on one loopback port.
type Server struct {
	// Host is "127.0.0.1:PORT".
	Host string
	// Mirror maps every upstream host of the catalog to its path here, in
	// the form addons.Mirror takes.
	Mirror map[string]string

	srv  *http.Server
	done chan struct{}
	once sync.Once
}

// Start listens on 127.0.0.1:0, publishes cat and serves until Close.
func Start(ctx context.Context, cat Catalog) (*Server, error) {
	files, err := httpRepoFiles(cat)
	if err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("stand-in mirror: %w", err)
	}

	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))

	mux := http.NewServeMux()
	mux.Handle("/v2/", reg)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)

			return
		}

		w.Write(b) //nolint:errcheck
	})

	s := &Server{
		Host:   ln.Addr().String(),
		Mirror: map[string]string{},
		srv:    &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		done:   make(chan struct{}),
	}

	go func() {
		defer close(s.done)
		s.srv.Serve(ln) //nolint:errcheck
	}()

	for _, img := range cat.Images {
		h, _ := upstreamHost(img.Ref)
		s.Mirror[h] = s.Host + "/" + h
	}

	for _, c := range cat.Charts {
		u, err := url.Parse(c.Repository)
		if err != nil {
			s.Close() //nolint:errcheck

			return nil, err
		}

		s.Mirror[u.Host] = s.Host + "/" + u.Host
	}

	if err := Publish(ctx, s.Host, cat); err != nil {
		s.Close() //nolint:errcheck

		return nil, err
	}

	return s, nil
}

// Close stops the server. It closes open connections at once instead of
// waiting for them to idle: clients that dialled but never sent a request
// would otherwise hold a graceful shutdown for seconds.
func (s *Server) Close() error {
	var err error

	s.once.Do(func() {
		err = s.srv.Close()
		<-s.done

		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
	})

	return err
}

func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}

	if host == "localhost" {
		return true
	}

	ip := net.ParseIP(host)

	return ip != nil && ip.IsLoopback()
}
