// Package mirror is the site cache: an OCI pull-through mirror (the
// registry API v2 read side: GET/HEAD of manifests and blobs) that a
// site's nodes use through containerd's registry mirror configuration
// (Talos machine.registries.mirrors / RegistryMirrorConfig). It fetches
// each blob once from the regional source however many nodes ask at the
// same time, verifies every manifest and blob by digest before storing or
// serving it, stores atomically, paces its WAN side to the site's cap,
// resumes interrupted transfers, and, when the source publishes a chunk
// index for a blob, fetches only the chunks it does not already hold.
package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"

	"github.com/labfleet/labfleet/fleetctl/sitecache/chunks"
	"github.com/labfleet/labfleet/fleetctl/sitecache/fsutil"
)

// Options configure a Mirror.
type Options struct {
	// Upstream is host[:port] of the regional registry.
	Upstream string
	// Insecure talks plain HTTP to Upstream.
	Insecure bool
	// Dir holds everything the cache stores.
	Dir string
	// BytesPerSecond caps the WAN side (0: no cap).
	BytesPerSecond int64
	// ChunkDelta fetches blobs chunk by chunk when an index is published.
	ChunkDelta bool
	// MaxBytes caps the stored blobs (0: no cap): past it the least
	// recently used blobs are evicted, except those the KeepManifests
	// most recently used manifests reference and those being served
	// (evict.go).
	MaxBytes int64
	// KeepManifests is how many of the most recently used manifests keep
	// their blobs (0: DefaultKeepManifests).
	KeepManifests int
	// Transport is the base transport to the upstream (default: http.DefaultTransport).
	Transport http.RoundTripper
	Logger    *slog.Logger
}

// Mirror is the site cache. It is an http.Handler.
type Mirror struct {
	o      Options
	log    *slog.Logger
	wan    *wanTransport
	store  *chunks.Store
	flight singleflight.Group
	ctx    context.Context //nolint:containedctx // fetches outlive the request that started them
	cancel context.CancelFunc

	// evictMu: fetches hold it shared (an assembly reads chunks out of
	// other blobs), eviction exclusively.
	evictMu sync.RWMutex

	mu         sync.Mutex
	stats      Stats
	transports map[string]http.RoundTripper
	blobs      map[string]*blobInfo // stored and in-use blobs, for eviction
}

// Stats count what the cache did (GET /_sitecache/stats).
type Stats struct {
	WANBytes       int64 `json:"wanBytes"`
	BlobsFetched   int   `json:"blobsFetched"`
	BlobsViaDelta  int   `json:"blobsViaDelta"`
	ChunksFetched  int   `json:"chunksFetched"`
	ChunksReused   int   `json:"chunksReused"`
	BytesResumed   int64 `json:"bytesResumed"`
	BlobsServed    int   `json:"blobsServed"`
	CorruptRefused int   `json:"corruptRefused"`
	// StoredBytes is the size of the blobs held now; BlobsEvicted and
	// BytesEvicted count what the size cap removed.
	StoredBytes  int64 `json:"storedBytes"`
	BlobsEvicted int   `json:"blobsEvicted"`
	BytesEvicted int64 `json:"bytesEvicted"`
}

// New opens (creating) the cache in o.Dir.
func New(o Options) (*Mirror, error) {
	if o.Transport == nil {
		o.Transport = defaultTransport(o.BytesPerSecond)
	}

	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}

	m := &Mirror{o: o, log: o.Logger, wan: newWANTransport(o.Transport, o.BytesPerSecond), transports: map[string]http.RoundTripper{},
		blobs: map[string]*blobInfo{}}

	for _, d := range []string{"blobs/sha256", "manifests/sha256", "partial", "tags"} {
		if err := os.MkdirAll(filepath.Join(o.Dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("creating site cache storage: %w", err)
		}
	}

	st, err := chunks.OpenStore(filepath.Join(o.Dir, "chunkstore"), m.blobPath)
	if err != nil {
		return nil, fmt.Errorf("opening chunk store: %w", err)
	}

	m.store = st
	m.ctx, m.cancel = context.WithCancel(context.Background())

	if err := m.loadBlobs(); err != nil {
		return nil, fmt.Errorf("reading stored blobs: %w", err)
	}

	return m, nil
}

// Dir is the storage directory.
func (m *Mirror) Dir() string { return m.o.Dir }

// Close stops fetches in flight (their finished chunks and partial data stay).
func (m *Mirror) Close() { m.cancel() }

// Stats returns a snapshot of the counters.
func (m *Mirror) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()

	s := m.stats
	s.WANBytes = m.wan.bytes.Load()

	for _, b := range m.blobs {
		if b.size > 0 {
			s.StoredBytes += b.size
		}
	}

	return s
}

func (m *Mirror) count(f func(*Stats)) {
	m.mu.Lock()
	f(&m.stats)
	m.mu.Unlock()
}

var (
	digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	// tagRE is the OCI distribution spec's tag grammar. Checked before a
	// tag names a file under DIR/tags (no "..", no "/").
	tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
)

func (m *Mirror) blobPath(d string) string {
	return filepath.Join(m.o.Dir, "blobs/sha256", strings.TrimPrefix(d, "sha256:"))
}

func (m *Mirror) manifestPath(d string) string {
	return filepath.Join(m.o.Dir, "manifests/sha256", strings.TrimPrefix(d, "sha256:"))
}

func (m *Mirror) repo(path string) (name.Repository, error) {
	var opts []name.Option
	if m.o.Insecure {
		opts = append(opts, name.Insecure)
	}

	return name.NewRepository(m.o.Upstream+"/"+path, opts...)
}

func (m *Mirror) remoteOpts(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithTransport(m.wan), remote.WithAuth(authn.Anonymous)}
}

// ServeHTTP answers the read side of the registry API v2. The "ns" query
// parameter containerd adds for mirrors is ignored: one cache mirrors one
// upstream.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_sitecache/stats" {
		w.Header().Set("Content-Type", "application/json")
		writeJSON(w, m.Stats())

		return
	}

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "the site cache is read-only")

		return
	}

	p := r.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		writeJSON(w, struct{}{})

		return
	}

	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		regError(w, http.StatusNotFound, "NAME_UNKNOWN", "not a registry API path")

		return
	}

	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		m.serveManifest(w, r, rest[:i], rest[i+len("/manifests/"):])

		return
	}

	if i := strings.LastIndex(rest, "/blobs/"); i > 0 {
		m.serveBlob(w, r, rest[:i], rest[i+len("/blobs/"):])

		return
	}

	regError(w, http.StatusNotFound, "NAME_UNKNOWN", "not a registry API path")
}

func (m *Mirror) serveManifest(w http.ResponseWriter, r *http.Request, repoPath, ref string) {
	repo, err := m.repo(repoPath)
	if err != nil {
		regError(w, http.StatusBadRequest, "NAME_INVALID", err.Error())

		return
	}

	dgst := ref
	if !digestRE.MatchString(ref) {
		if !tagRE.MatchString(ref) {
			regError(w, http.StatusBadRequest, "TAG_INVALID", "want a tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127}) or sha256:<64 hex>")

			return
		}

		dgst, err = m.resolveTag(r.Context(), repo, repoPath, ref)
		if err != nil {
			m.log.Warn("resolving tag", "repo", repoPath, "tag", ref, "err", err)
			regError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", err.Error())

			return
		}
	}

	v, err, _ := m.flight.Do("manifest "+dgst, func() (any, error) { return nil, m.ensureManifest(repo, dgst) })
	_ = v

	if err != nil {
		m.log.Warn("fetching manifest", "repo", repoPath, "digest", dgst, "err", err)
		regError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", err.Error())

		return
	}

	body, err := os.ReadFile(m.manifestPath(dgst))
	if err != nil {
		regError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())

		return
	}

	mt, _ := os.ReadFile(m.manifestPath(dgst) + ".type")

	m.touch(dgst, m.manifestPath(dgst)) // eviction keeps the blobs of recently used manifests

	w.Header().Set("Content-Type", string(mt))
	w.Header().Set("Docker-Content-Digest", dgst)
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))

	if r.Method == http.MethodGet {
		w.Write(body) //nolint:errcheck
	}
}

// resolveTag asks the upstream which digest a tag names now. When the
// upstream cannot be reached it answers from the last resolution, so a
// site whose WAN is down still serves what it staged.
func (m *Mirror) resolveTag(ctx context.Context, repo name.Repository, repoPath, tag string) (string, error) {
	tagFile := filepath.Join(m.o.Dir, "tags", filepath.FromSlash(repoPath), tag)

	desc, err := remote.Head(repo.Tag(tag), m.remoteOpts(ctx)...)
	if err != nil {
		if old, rerr := os.ReadFile(tagFile); rerr == nil && digestRE.Match(old) {
			m.log.Warn("upstream unreachable: serving the last known digest of the tag", "repo", repoPath, "tag", tag, "err", err)

			return string(old), nil
		}

		return "", fmt.Errorf("resolving %s:%s upstream: %w", repoPath, tag, err)
	}

	if _, err := fsutil.WriteAtomic(tagFile, strings.NewReader(desc.Digest.String())); err != nil {
		m.log.Warn("recording tag", "err", err)
	}

	return desc.Digest.String(), nil
}

func (m *Mirror) ensureManifest(repo name.Repository, dgst string) error {
	if _, err := os.Stat(m.manifestPath(dgst)); err == nil {
		return nil
	}

	desc, err := remote.Get(repo.Digest(dgst), m.remoteOpts(m.ctx)...)
	if err != nil {
		return fmt.Errorf("fetching manifest %s: %w", dgst, err)
	}

	sum := sha256.Sum256(desc.Manifest)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != dgst {
		return fmt.Errorf("manifest %s from upstream has digest %s: refused", dgst, got)
	}

	if _, err := fsutil.WriteAtomic(m.manifestPath(dgst)+".type", strings.NewReader(string(desc.MediaType))); err != nil {
		return err
	}

	if _, err := fsutil.WriteAtomic(m.manifestPath(dgst), bytes.NewReader(desc.Manifest)); err != nil {
		return err
	}

	return nil
}

func (m *Mirror) serveBlob(w http.ResponseWriter, r *http.Request, repoPath, dgst string) {
	if !digestRE.MatchString(dgst) {
		regError(w, http.StatusBadRequest, "DIGEST_INVALID", "want sha256:<64 hex>")

		return
	}

	repo, err := m.repo(repoPath)
	if err != nil {
		regError(w, http.StatusBadRequest, "NAME_INVALID", err.Error())

		return
	}

	// in use from before it is looked up until served: never evicted mid-read
	m.acquire(dgst)
	defer m.release(dgst)

	if _, err := os.Stat(m.blobPath(dgst)); err != nil {
		// Every node asking for the same blob waits on one fetch; it runs
		// on the cache's context, so a node that gives up does not cancel
		// it for the others.
		ch := m.flight.DoChan("blob "+dgst, func() (any, error) {
			err := m.fetchBlob(repo, dgst)
			m.maybeEvict()

			return nil, err
		})

		select {
		case res := <-ch:
			if res.Err != nil {
				m.log.Error("fetching blob", "repo", repoPath, "digest", dgst, "err", res.Err)
				regError(w, http.StatusBadGateway, "BLOB_UNKNOWN", res.Err.Error())

				return
			}
		case <-r.Context().Done():
			return
		}
	}

	f, err := os.Open(m.blobPath(dgst))
	if err != nil {
		regError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())

		return
	}
	defer f.Close()

	m.count(func(s *Stats) { s.BlobsServed++ })
	m.touch(dgst, m.blobPath(dgst))

	w.Header().Set("Docker-Content-Digest", dgst)
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// fetchBlob brings one blob into the cache: through its chunk index when
// one is published (only missing chunks cross the WAN), else whole (resuming
// a partial download). Either way the stored blob's digest is checked.
func (m *Mirror) fetchBlob(repo name.Repository, dgst string) error {
	m.evictMu.RLock()
	defer m.evictMu.RUnlock()

	if _, err := os.Stat(m.blobPath(dgst)); err == nil {
		return nil
	}

	err := m.fetchBlobLocked(repo, dgst)
	if err == nil {
		m.stored(dgst)
	}

	return err
}

func (m *Mirror) fetchBlobLocked(repo name.Repository, dgst string) error {
	start := time.Now()
	wan0 := m.wan.bytes.Load()

	if m.o.ChunkDelta {
		x, err := chunks.FetchIndex(m.ctx, repo, dgst, m.remoteOpts(m.ctx)...)

		switch {
		case err == nil:
			err = m.fetchByChunks(repo, x)
			if err == nil {
				m.count(func(s *Stats) { s.BlobsFetched++; s.BlobsViaDelta++ })
				m.log.Info("blob stored", "digest", dgst, "via", "chunks", "size", x.Size,
					"wanBytes", m.wan.bytes.Load()-wan0, "took", time.Since(start).Round(time.Millisecond))

				return nil
			}

			if !errors.Is(err, chunks.ErrCorruptChunk) && !errors.Is(err, chunks.ErrBlobMismatch) {
				// A cut link or a stop: the chunks that arrived are kept
				// and the next request resumes from them.
				return err
			}

			// Content the index promised did not arrive: refuse it, and
			// do not leave the nodes without their image: fetch the whole
			// blob, which is checked against its digest too.
			m.count(func(s *Stats) { s.CorruptRefused++ })
			m.log.Warn("chunk transfer refused; fetching the whole blob", "digest", dgst, "err", err)
		case errors.Is(err, chunks.ErrNoIndex):
			m.log.Debug("no chunk index published", "digest", dgst)
		default:
			m.log.Warn("reading chunk index; fetching the whole blob", "digest", dgst, "err", err)
		}
	}

	if err := m.fetchWhole(repo, dgst); err != nil {
		return err
	}

	m.count(func(s *Stats) { s.BlobsFetched++ })
	m.log.Info("blob stored", "digest", dgst, "via", "whole", "wanBytes", m.wan.bytes.Load()-wan0,
		"took", time.Since(start).Round(time.Millisecond))

	return nil
}

func (m *Mirror) fetchByChunks(repo name.Repository, x *chunks.Index) error {
	missing := m.store.Missing(x)
	m.count(func(s *Stats) { s.ChunksReused += len(x.Chunks) - len(missing) })

	for _, run := range chunks.Runs(missing) {
		last := run[len(run)-1]

		body, err := m.getRange(repo, x.Blob, run[0].Offset, last.Offset+last.Size-1)
		if err != nil {
			return err
		}

		err = m.store.Receive(x.Blob, run, body)
		body.Close() //nolint:errcheck

		if err != nil {
			return err
		}

		m.count(func(s *Stats) { s.ChunksFetched += len(run) })
	}

	tmp, err := os.CreateTemp(filepath.Join(m.o.Dir, "blobs/sha256"), ".assemble-*")
	if err != nil {
		return fmt.Errorf("assembling %s: %w", x.Blob, err)
	}

	if err := m.store.Assemble(x, tmp); err != nil {
		tmp.Close()           //nolint:errcheck
		os.Remove(tmp.Name()) //nolint:errcheck

		return err
	}

	if err := fsutil.Commit(tmp, m.blobPath(x.Blob)); err != nil {
		return err
	}

	return m.store.AddBlob(x)
}

// fetchWhole downloads a blob into DIR/partial/HEX, continuing from what a
// previous, interrupted attempt left there; the whole is checked against
// its digest before it is renamed into place.
func (m *Mirror) fetchWhole(repo name.Repository, dgst string) error {
	partial := filepath.Join(m.o.Dir, "partial", strings.TrimPrefix(dgst, "sha256:"))

	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening partial download: %w", err)
	}

	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close() //nolint:errcheck

		return fmt.Errorf("reading partial download: %w", err)
	}

	size, err := m.blobSize(repo, dgst)
	if err != nil {
		f.Close() //nolint:errcheck

		return err
	}

	if have > size {
		have = 0
	}

	if have > 0 {
		m.count(func(s *Stats) { s.BytesResumed += have })
		m.log.Info("resuming blob download", "digest", dgst, "have", have, "size", size)
	}

	if have < size {
		body, err := m.getRange(repo, dgst, have, size-1)
		if err != nil {
			f.Close() //nolint:errcheck

			return err
		}

		if err := f.Truncate(have); err == nil {
			_, err = f.Seek(have, io.SeekStart)
		}

		if err == nil {
			_, err = io.Copy(f, body)
		}

		body.Close() //nolint:errcheck

		if err != nil {
			f.Sync()  //nolint:errcheck // keep what arrived for the next attempt
			f.Close() //nolint:errcheck

			return fmt.Errorf("downloading %s: %w", dgst, err)
		}
	}

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close() //nolint:errcheck

		return err
	}

	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		f.Close() //nolint:errcheck

		return fmt.Errorf("verifying %s: %w", dgst, err)
	}

	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
		f.Close()          //nolint:errcheck
		os.Remove(partial) //nolint:errcheck

		return fmt.Errorf("blob %s from upstream has digest %s: refused, not stored", dgst, got)
	}

	if err := fsutil.Commit(f, m.blobPath(dgst)); err != nil {
		return err
	}

	// Index the new blob so its chunks serve the next release's delta.
	bf, err := os.Open(m.blobPath(dgst))
	if err != nil {
		return err
	}
	defer bf.Close()

	x, err := chunks.Split(bf, dgst)
	if err != nil {
		return err
	}

	return m.store.AddBlob(x)
}

// upstreamTransport is ggcr's registry transport (ping, token handshake,
// scheme) for one repository, made once: each handshake costs round trips
// that a 100 ms link makes expensive.
func (m *Mirror) upstreamTransport(repo name.Repository) (http.RoundTripper, error) {
	m.mu.Lock()
	rt, ok := m.transports[repo.String()]
	m.mu.Unlock()

	if ok {
		return rt, nil
	}

	rt, err := transport.NewWithContext(m.ctx, repo.Registry, authn.Anonymous, m.wan, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", repo.Registry, err)
	}

	m.mu.Lock()
	m.transports[repo.String()] = rt
	m.mu.Unlock()

	return rt, nil
}

func (m *Mirror) blobURL(repo name.Repository, dgst string) string {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), dgst)
}

func (m *Mirror) blobSize(repo name.Repository, dgst string) (int64, error) {
	rt, err := m.upstreamTransport(repo)
	if err != nil {
		return 0, err
	}

	req, err := http.NewRequestWithContext(m.ctx, http.MethodHead, m.blobURL(repo, dgst), nil)
	if err != nil {
		return 0, err
	}

	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return 0, fmt.Errorf("asking upstream for blob %s: %w", dgst, err)
	}
	resp.Body.Close() //nolint:errcheck

	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
		return 0, fmt.Errorf("asking upstream for blob %s: %s", dgst, resp.Status)
	}

	return resp.ContentLength, nil
}

// getRange fetches bytes [from, to] of a blob. A registry that ignores
// Range would send the whole blob; that is refused rather than stored at
// the wrong offset.
func (m *Mirror) getRange(repo name.Repository, dgst string, from, to int64) (io.ReadCloser, error) {
	rt, err := m.upstreamTransport(repo)
	if err != nil {
		return nil, err
	}

	req, err := http.NewRequestWithContext(m.ctx, http.MethodGet, m.blobURL(repo, dgst), nil)
	if err != nil {
		return nil, err
	}

	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))

	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching bytes %d-%d of %s: %w", from, to, dgst, err)
	}

	if resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close() //nolint:errcheck

		return nil, fmt.Errorf("fetching bytes %d-%d of %s: upstream answered %s, want 206 Partial Content", from, to, dgst, resp.Status)
	}

	return resp.Body, nil
}
