package addons_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/labfleet/labfleet/extensions/addons"
)

// BenchmarkRender measures fetching (from the in-process stand-in mirror),
// rendering and decoding the four add-ons.
func BenchmarkRender(b *testing.B) {
	list, err := addons.LoadAll(root, fetched)
	if err != nil {
		b.Fatal(err)
	}

	objects := 0

	for b.Loop() {
		objects = 0

		for _, a := range list {
			fc, err := addons.VerifyChart(context.Background(), a.Chart, mirror)
			if err != nil {
				b.Fatal(err)
			}

			r, err := addons.Render(context.Background(), a, fc, addons.RenderOptions{})
			if err != nil {
				b.Fatal(err)
			}

			objects += len(r.Objects)
		}
	}

	b.ReportMetric(float64(objects), "objects")
}

// BenchmarkCache measures pulling the eight pinned images by digest into a
// fresh OCI layout, and reports its size and the bytes de-duplication saved.
func BenchmarkCache(b *testing.B) {
	list, err := addons.LoadAll(root, fetched)
	if err != nil {
		b.Fatal(err)
	}

	var pins []addons.PinnedImage

	for _, a := range list {
		for _, img := range a.Images {
			pins = append(pins, addons.PinnedImage{Ref: img.Ref, Digest: img.Digest})
		}
	}

	var stats *addons.CacheStats

	for i := 0; b.Loop(); i++ {
		stats, err = addons.BuildCache(context.Background(), filepath.Join(b.TempDir(), fmt.Sprint(i)), pins, mirror, nil)
		if err != nil {
			b.Fatal(err)
		}
	}

	b.ReportMetric(float64(stats.Bytes), "cache-bytes")
	b.ReportMetric(float64(stats.LayerBytes), "layer-bytes")
	b.ReportMetric(float64(stats.DedupSavedBytes), "dedup-saved-bytes")
}
