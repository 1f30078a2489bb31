package mirror

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DefaultKeepManifests is how many of the most recently used manifests
// keep their blobs from eviction when Options.KeepManifests is 0: the
// release being rolled out and the one before it (a rollback target).
const DefaultKeepManifests = 2

// blobInfo is what eviction knows of a blob (guarded by Mirror.mu).
type blobInfo struct {
	size     int64 // -1: not stored (yet)
	lastUsed time.Time
	refs     int // requests serving it now
}

// loadBlobs reads the stored blobs' sizes and last use (the file's mtime,
// which serving refreshes, so the order survives a restart).
func (m *Mirror) loadBlobs() error {
	entries, err := os.ReadDir(filepath.Join(m.o.Dir, "blobs/sha256"))
	if err != nil {
		return err
	}

	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue // an assembly left by a crash
		}

		info, err := e.Info()
		if err != nil {
			continue
		}

		m.blobs["sha256:"+e.Name()] = &blobInfo{size: info.Size(), lastUsed: info.ModTime()}
	}

	return nil
}

// acquire marks blob d in use: eviction skips it until release. Taken
// before the blob is looked up, so a blob fetched for a request cannot be
// evicted before the request has read it.
func (m *Mirror) acquire(d string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	b := m.blobs[d]
	if b == nil {
		b = &blobInfo{size: -1}
		m.blobs[d] = b
	}

	b.refs++
}

func (m *Mirror) release(d string) {
	m.mu.Lock()
	defer m.mu.Unlock()

	if b := m.blobs[d]; b != nil {
		b.refs--
		if b.refs == 0 && b.size < 0 {
			delete(m.blobs, d) // never stored (the fetch failed)
		}
	}
}

// stored records a blob that was just written, used now.
func (m *Mirror) stored(d string) {
	info, err := os.Stat(m.blobPath(d))
	if err != nil {
		return
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	b := m.blobs[d]
	if b == nil {
		b = &blobInfo{}
		m.blobs[d] = b
	}

	b.size, b.lastUsed = info.Size(), time.Now()
}

// touch marks a blob or manifest file used now: in memory for blobs, and
// the file's mtime for both (best effort), which a restart reads back.
func (m *Mirror) touch(d, path string) {
	now := time.Now()

	m.mu.Lock()
	if b := m.blobs[d]; b != nil {
		b.lastUsed = now
	}
	m.mu.Unlock()

	os.Chtimes(path, now, now) //nolint:errcheck // only the eviction order depends on it
}

// maybeEvict runs an eviction unless a fetch is running (it may be reading
// chunks out of a blob eviction would pick); the last fetch to finish
// evicts.
func (m *Mirror) maybeEvict() {
	if m.o.MaxBytes <= 0 || !m.evictMu.TryLock() {
		return
	}
	defer m.evictMu.Unlock()

	m.evict()
}

// Evict brings the stored blobs under Options.MaxBytes now, waiting for
// fetches in flight to finish first. The cache calls it by itself after
// each blob it stores.
func (m *Mirror) Evict() {
	if m.o.MaxBytes <= 0 {
		return
	}

	m.evictMu.Lock()
	defer m.evictMu.Unlock()

	m.evict()
}

// evict removes least recently used blobs until the stored blobs fit in
// MaxBytes. It never removes a blob that one of the KeepManifests most
// recently used manifests references (the release being rolled out, and
// the one before it to roll back to), nor one a request is reading; when
// only such blobs are left it stays over the cap and says why. A
// manifest stays (it is small): a node asking for an evicted release gets
// its blobs fetched again. The caller holds evictMu exclusively.
func (m *Mirror) evict() {
	keep := m.protected()

	type cand struct {
		d        string
		size     int64
		lastUsed time.Time
	}

	var (
		total int64
		cands []cand
	)

	m.mu.Lock()
	for d, b := range m.blobs {
		if b.size < 0 {
			continue
		}

		total += b.size

		if !keep[d] {
			cands = append(cands, cand{d, b.size, b.lastUsed})
		}
	}
	m.mu.Unlock()

	if total <= m.o.MaxBytes {
		return
	}

	sort.Slice(cands, func(i, j int) bool { return cands[i].lastUsed.Before(cands[j].lastUsed) })

	var inUse []string

	for _, c := range cands {
		if total <= m.o.MaxBytes {
			break
		}

		m.mu.Lock()
		b := m.blobs[c.d]

		if b == nil || b.size < 0 {
			m.mu.Unlock()

			continue
		}

		if b.refs > 0 {
			m.mu.Unlock()

			inUse = append(inUse, c.d)

			continue
		}

		// Removed under mu: a request acquires the blob either before
		// (and it is skipped above) or after, and then finds it gone and
		// fetches it again.
		err := os.Remove(m.blobPath(c.d))
		if err == nil || os.IsNotExist(err) {
			delete(m.blobs, c.d)
		}
		m.mu.Unlock()

		if err != nil && !os.IsNotExist(err) {
			m.log.Warn("evicting blob", "digest", c.d, "err", err)

			continue
		}

		if err := m.store.RemoveBlob(c.d); err != nil {
			m.log.Warn("evicting blob", "digest", c.d, "err", err)
		}

		total -= c.size

		m.count(func(s *Stats) { s.BlobsEvicted++; s.BytesEvicted += c.size })
		m.log.Info("blob evicted", "digest", c.d, "size", c.size, "lastUsed", c.lastUsed.Format(time.RFC3339), "stored", total, "maxBytes", m.o.MaxBytes)
	}

	if total > m.o.MaxBytes {
		m.log.Warn("site cache over its size cap: what is left is in use or referenced by the newest manifests",
			"stored", total, "maxBytes", m.o.MaxBytes, "inUse", len(inUse), "keepManifests", m.keepManifests())
	}
}

func (m *Mirror) keepManifests() int {
	if m.o.KeepManifests > 0 {
		return m.o.KeepManifests
	}

	return DefaultKeepManifests
}

// protected lists the blobs the most recently used manifests reference
// (an index's child manifests are followed).
func (m *Mirror) protected() map[string]bool {
	dir := filepath.Join(m.o.Dir, "manifests/sha256")

	entries, err := os.ReadDir(dir)
	if err != nil {
		return map[string]bool{}
	}

	type man struct {
		d  string
		at time.Time
	}

	var ms []man

	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || strings.HasSuffix(e.Name(), ".type") {
			continue
		}

		if info, err := e.Info(); err == nil {
			ms = append(ms, man{"sha256:" + e.Name(), info.ModTime()})
		}
	}

	sort.Slice(ms, func(i, j int) bool { return ms[i].at.After(ms[j].at) })

	out := map[string]bool{}
	seen := map[string]bool{}

	var walk func(d string, depth int)

	walk = func(d string, depth int) {
		if seen[d] || depth > 2 {
			return
		}

		seen[d] = true

		data, err := os.ReadFile(m.manifestPath(d))
		if err != nil {
			return
		}

		var doc struct {
			Config    struct{ Digest string }   `json:"config"`
			Layers    []struct{ Digest string } `json:"layers"`
			Manifests []struct{ Digest string } `json:"manifests"`
		}

		if json.Unmarshal(data, &doc) != nil {
			return
		}

		if doc.Config.Digest != "" {
			out[doc.Config.Digest] = true
		}

		for _, l := range doc.Layers {
			out[l.Digest] = true
		}

		for _, c := range doc.Manifests {
			walk(c.Digest, depth+1)
		}
	}

	for i := 0; i < len(ms) && i < m.keepManifests(); i++ {
		walk(ms[i].d, 0)
	}

	return out
}
