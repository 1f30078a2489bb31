package addons_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/labfleet/labfleet/extensions/addons"
	"github.com/labfleet/labfleet/extensions/standin"
)

// mirror is the stand-in mirror every test in the package shares: the
// upstream hosts mapped to an in-process registry on 127.0.0.1.
var mirror addons.Mirror

func TestMain(m *testing.M) {
	s, err := standin.Start(context.Background(), standin.DefaultCatalog())
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting stand-in mirror:", err)
		os.Exit(1)
	}

	mirror = s.Mirror
	code := m.Run()

	s.Close() //nolint:errcheck
	os.Exit(code)
}

// root is the repository's extensions/ directory.
const root = ".."

// copyAddon copies one add-on directory to a temporary root, so a test may
// change it.
func copyAddon(t *testing.T, name string) string {
	t.Helper()

	dst := t.TempDir()
	if err := os.CopyFS(filepath.Join(dst, name), os.DirFS(filepath.Join(root, name))); err != nil {
		t.Fatalf("copying %s: %v", name, err)
	}

	return dst
}

// fetched are the add-ons whose charts and images come from the (stand-in)
// mirror; the site cache, built by this project, has its own tests
// (sitecache_addon_test.go).
var fetched = []string{"cilium", "metallb", "otel-collector", "thanos"}

func loadAll(t *testing.T) []*addons.Addon {
	t.Helper()

	list, err := addons.LoadAll(root, fetched)
	if err != nil {
		t.Fatalf("loading add-ons: %v", err)
	}

	return list
}

func renderOne(t *testing.T, a *addons.Addon, site *addons.SiteValues) *addons.Rendered {
	t.Helper()

	fc, err := addons.VerifyChart(context.Background(), a.Chart, mirror)
	if err != nil {
		t.Fatalf("fetching chart of %s: %v", a.Name, err)
	}

	r, err := addons.Render(context.Background(), a, fc, addons.RenderOptions{Site: site})
	if err != nil {
		t.Fatalf("rendering %s: %v", a.Name, err)
	}

	return r
}

func testSite() *addons.SiteValues {
	return &addons.SiteValues{
		Name:    "fra1",
		Region:  "eu-central",
		MetalLB: addons.SiteMetalLB{AddressPools: []string{"10.20.0.0/28", "10.20.1.10-10.20.1.20"}},
		OTel:    addons.SiteOTel{Endpoint: "otel.fra1.example:4317"},
		Thanos:  addons.SiteThanos{ObjstoreSecret: "thanos-bucket-fra1"},
	}
}
