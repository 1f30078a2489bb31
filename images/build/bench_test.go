package build_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/images/spec"
)

// benchInitramfs is $LABFLEET_BENCH_INITRAMFS when set (hack/bench.sh points
// it at the labos initramfs it built), otherwise 14 MiB of seeded random
// bytes: about the labos initramfs's size, and as incompressible as a real
// compressed one. The trivial base's initramfs would flatter the figures.
func benchInitramfs(tb testing.TB) []byte {
	if p := os.Getenv("LABFLEET_BENCH_INITRAMFS"); p != "" {
		data, err := os.ReadFile(p)
		require.NoError(tb, err, "LABFLEET_BENCH_INITRAMFS")

		return data
	}

	data := make([]byte, 14<<20)
	r := rand.NewChaCha8([32]byte{'l', 'a', 'b'})
	_, err := r.Read(data)
	require.NoError(tb, err)

	return data
}

// newBenchFixture is build_test.go's fixture with a labos-sized initramfs.
func newBenchFixture(tb testing.TB) (*fixture, float64) {
	initramfs := benchInitramfs(tb)

	f := newFixtureWith(tb, initramfs)
	// The lab definition's disk (images/lab.yaml); add-ons are benchmarked in extensions/.
	f.def.Disk = spec.Disk{ESPMiB: 96, StateMiB: 128}

	return f, float64(len(initramfs)) / 1e6
}

func reportSizes(b *testing.B, initramfsMB float64, rec *record.Record) {
	for _, kind := range []string{spec.OutputUKI, spec.OutputDisk} {
		o, ok := rec.Output(kind)
		require.True(b, ok, "output %s missing", kind)
		b.ReportMetric(float64(o.Size)/1e6, kind+"-MB")
	}

	b.ReportMetric(initramfsMB, "initramfs-MB")
}

// BenchmarkBuildLab is a warm full build (UKI + disk + installer) with
// Force: the base is served from the in-process registry and the page cache,
// so this is the builder's own cost. Target (images/README.md): under 5 s.
func BenchmarkBuildLab(b *testing.B) {
	f, initramfsMB := newBenchFixture(b)
	out := filepath.Join(f.root, "_out")

	// Warm-up: the first build also fills the page cache and Go's lazily
	// initialised state (imager, crypto).
	res, err := f.build(b, out, true)
	require.NoError(b, err)

	for b.Loop() {
		res, err = f.build(b, out, true)
		if err != nil {
			b.Fatalf("build: %v", err)
		}
	}

	require.False(b, res.Record.Cached, "a forced build was served from the cache")
	reportSizes(b, initramfsMB, res.Record)
}

// BenchmarkNoopRebuild is a rebuild with nothing changed: it hashes the
// inputs into the cache key and answers from the build record. Target:
// under 0.5 s.
func BenchmarkNoopRebuild(b *testing.B) {
	f, initramfsMB := newBenchFixture(b)
	out := filepath.Join(f.root, "_out")

	res, err := f.build(b, out, false)
	require.NoError(b, err)

	for b.Loop() {
		res, err = f.build(b, out, false)
		if err != nil {
			b.Fatalf("rebuild: %v", err)
		}

		if !res.Record.Cached {
			b.Fatal("a rebuild with nothing changed did work")
		}
	}

	reportSizes(b, initramfsMB, res.Record)
}
