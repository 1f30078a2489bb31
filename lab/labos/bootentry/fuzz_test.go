package bootentry_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
)

// FuzzParse: any file name either is refused or parses into a base that
// is safe as a path element and a loader.conf value, and whose file name
// round-trips.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"lab-1.0.0.efi", "lab-1.1.0+3.efi", "lab-1.1.0+2-1.efi", "lab-1.1.0+0-3.efi", "LAB.EFI",
		"lab+x.efi", "lab++3.efi", "../x+3.efi", "lab\n+3.efi", "lab-1.0+99999999999999999999.efi", ".efi", "+3.efi", "a+3-4-5.efi"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, file string) {
		e, err := bootentry.Parse(file)
		if err != nil {
			return
		}

		if e.File != file {
			t.Fatalf("File %q != input %q", e.File, file)
		}

		if strings.ContainsAny(e.Base, "/\\\x00\n\r+*") || strings.Contains(e.Base, "..") || e.Base == "" {
			t.Fatalf("unsafe base %q from %q", e.Base, file)
		}

		if filepath.Base(e.File) != e.File {
			t.Fatalf("file name %q is not a single path element", e.File)
		}

		if e.Left < 0 || e.Done < 0 || (!e.Counted && (e.Left != 0 || e.Done != 0)) {
			t.Fatalf("bad counter %+v", e)
		}

		again, err := bootentry.Parse(e.ID())
		if err != nil || again.Counted || again.Base != e.Base {
			t.Fatalf("id %q of %q does not parse back: %+v %v", e.ID(), file, again, err)
		}
	})
}

// FuzzValidateLabel: labels that pass make an entry file that parses back
// to the same name and version with a fresh counter, stays inside
// EFI/Linux, and makes a loader.conf default of one line.
func FuzzValidateLabel(f *testing.F) {
	f.Add("lab", "1.0.0")
	f.Add("lab", "x/../../../../outside/pwned")
	f.Add("lab\nsecure-boot-enroll force", "1.1.0")
	f.Add("lab", "1.1.0+0-3")
	f.Add("lab-cp", "v1.2.3-rc.1")
	f.Add("*", "1")
	f.Add("a", strings.Repeat("9", 63))

	f.Fuzz(func(t *testing.T, name, version string) {
		if bootentry.ValidateLabel("name", name) != nil || bootentry.ValidateLabel("version", version) != nil {
			return
		}

		file := bootentry.EntryFile(name, version)

		e, err := bootentry.Parse(file)
		if err != nil {
			t.Fatalf("valid labels %q %q make an unparsable entry %q: %v", name, version, file, err)
		}

		if e.Base != name+"-"+version || !e.Counted || e.Left != bootentry.DefaultTries || e.Done != 0 {
			t.Fatalf("entry %q parsed as %+v", file, e)
		}

		p := filepath.Join("/esp", bootentry.Dir, file)
		if filepath.Dir(p) != "/esp/"+bootentry.Dir {
			t.Fatalf("entry %q escapes %s: %s", file, bootentry.Dir, p)
		}

		if strings.ContainsAny(bootentry.Glob(name), "\n\r\x00 ") {
			t.Fatalf("glob of %q is not one loader.conf token", name)
		}
	})
}
