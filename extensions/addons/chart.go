package addons

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/registry"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/yaml"
)

// maxChartBytes bounds what a chart download may be; real charts are well
// under a few MiB (Cilium's is the largest of ours, ~200 KiB).
const maxChartBytes = 32 << 20

// FetchedChart is a chart archive and the digest computed over its bytes.
type FetchedChart struct {
	// Archive is the .tgz bytes.
	Archive []byte
	// Digest is "sha256:<hex>" of Archive.
	Digest string
	// From is where the bytes came from (after mirroring), for logs.
	From string
	// Loaded is the chart of a local chart directory (Chart.Local), whose
	// Archive is empty; Digest is then LocalChartDigest's.
	Loaded *chart.Chart
}

// LoadChart returns the add-on's chart: a local chart read from the
// add-on directory, or the upstream chart fetched through the mirror and
// checked against its pin (VerifyChart).
func (a *Addon) LoadChart(ctx context.Context, m Mirror) (*FetchedChart, error) {
	if a.Chart.Local == "" {
		return VerifyChart(ctx, a.Chart, m)
	}

	dir := filepath.Join(a.Dir, a.Chart.Local)

	ch, err := loader.LoadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: chart.local: loading %s: %w", a.File, dir, err)
	}

	return &FetchedChart{Loaded: ch, Digest: LocalChartDigest(ch), From: dir}, nil
}

// LocalChartDigest is "sha256:<hex>" over a loaded chart's files (path,
// length and bytes of each, in path order): the record of which local chart
// was baked, independent of file timestamps (a packaged .tgz is not).
func LocalChartDigest(ch *chart.Chart) string {
	files := append([]*chart.File(nil), ch.Raw...)
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })

	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%d\x00", f.Name, len(f.Data))
		h.Write(f.Data)
	}

	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// FetchChart downloads chart c (its repository, name and version) through
// the mirror. It does not compare against c.Digest: see VerifyChart.
func FetchChart(ctx context.Context, c Chart, m Mirror) (*FetchedChart, error) {
	if c.Local != "" {
		return nil, fmt.Errorf("chart %s: local chart %q: load it with Addon.LoadChart", c.Name, c.Local)
	}

	if c.RepoKind() == RepoOCI {
		return fetchOCIChart(c, m)
	}

	return fetchHTTPChart(ctx, c, m)
}

// VerifyChart fetches the chart and fails unless its digest equals the pin.
func VerifyChart(ctx context.Context, c Chart, m Mirror) (*FetchedChart, error) {
	fc, err := FetchChart(ctx, c, m)
	if err != nil {
		return nil, err
	}

	if fc.Digest != c.Digest {
		return nil, fmt.Errorf("chart %s %s from %s: digest %s does not match the pinned %s", c.Name, c.Version, fc.From, fc.Digest, c.Digest)
	}

	return fc, nil
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)

	return "sha256:" + hex.EncodeToString(sum[:])
}

func fetchOCIChart(c Chart, m Mirror) (*FetchedChart, error) {
	ref, plain, err := m.OCIChartRef(c)
	if err != nil {
		return nil, err
	}

	opts := []registry.ClientOption{
		registry.ClientOptWriter(io.Discard),
		// No login ever happens: point the credentials store at a file that
		// does not exist rather than the user's Helm config.
		registry.ClientOptCredentialsFile(filepath.Join("/nonexistent", "labfleet-registry.json")),
	}
	if plain {
		opts = append(opts, registry.ClientOptPlainHTTP())
	}

	client, err := registry.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("helm registry client: %w", err)
	}

	res, err := client.Pull(ref, registry.PullOptWithChart(true))
	if err != nil {
		return nil, fmt.Errorf("pulling chart %s: %w", ref, err)
	}

	got := sha256Digest(res.Chart.Data)
	if res.Chart.Digest != "" && res.Chart.Digest != got {
		return nil, fmt.Errorf("pulling chart %s: layer digest %s does not match its content %s", ref, res.Chart.Digest, got)
	}

	return &FetchedChart{Archive: res.Chart.Data, Digest: got, From: "oci://" + ref}, nil
}

func httpGet(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close() //nolint:errcheck

	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}

	b, err := io.ReadAll(io.LimitReader(resp.Body, maxChartBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}

	if len(b) > maxChartBytes {
		return nil, fmt.Errorf("GET %s: larger than %d bytes", u, maxChartBytes)
	}

	return b, nil
}

// ChartIndex reads an HTTP Helm repository's index.yaml through the mirror.
func ChartIndex(ctx context.Context, repoURL string, m Mirror) (*repo.IndexFile, error) {
	indexURL, err := m.URL(strings.TrimSuffix(repoURL, "/") + "/index.yaml")
	if err != nil {
		return nil, err
	}

	data, err := httpGet(ctx, indexURL)
	if err != nil {
		return nil, fmt.Errorf("reading chart index: %w", err)
	}

	idx := &repo.IndexFile{}
	if err := yaml.Unmarshal(data, idx); err != nil {
		return nil, fmt.Errorf("parsing chart index %s: %w", indexURL, err)
	}

	idx.SortEntries()

	return idx, nil
}

func fetchHTTPChart(ctx context.Context, c Chart, m Mirror) (*FetchedChart, error) {
	idx, err := ChartIndex(ctx, c.Repository, m)
	if err != nil {
		return nil, err
	}

	cv, err := idx.Get(c.Name, c.Version)
	if err != nil {
		return nil, fmt.Errorf("chart %s %s in %s: %w", c.Name, c.Version, c.Repository, err)
	}

	if len(cv.URLs) == 0 {
		return nil, fmt.Errorf("chart %s %s in %s: index lists no URL", c.Name, c.Version, c.Repository)
	}

	// URLs in an index may be relative to the repository.
	base, err := url.Parse(strings.TrimSuffix(c.Repository, "/") + "/")
	if err != nil {
		return nil, err
	}

	rel, err := url.Parse(cv.URLs[0])
	if err != nil {
		return nil, fmt.Errorf("chart %s %s: bad URL %q: %w", c.Name, c.Version, cv.URLs[0], err)
	}

	upstream := base.ResolveReference(rel).String()

	u, err := m.URL(upstream)
	if err != nil {
		return nil, err
	}

	data, err := httpGet(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("downloading chart: %w", err)
	}

	got := sha256Digest(data)

	// The index's digest is hex without the algorithm prefix.
	if cv.Digest != "" && "sha256:"+cv.Digest != got {
		return nil, fmt.Errorf("chart %s from %s: content %s does not match the index digest sha256:%s", c.Name, u, got, cv.Digest)
	}

	return &FetchedChart{Archive: data, Digest: got, From: u}, nil
}
