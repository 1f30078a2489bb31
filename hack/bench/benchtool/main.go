// Command benchtool does the JSON and OCI work hack/bench.sh needs with the
// project's own packages, so the bench needs no jq and extracts the base
// exactly as the builder does.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/labfleet/labfleet/images/base"
	"github.com/labfleet/labfleet/images/record"
	"github.com/labfleet/labfleet/lab/labbase"
)

const usage = `usage:
  benchtool labbase OUT [trivial]  build the lab base (labos, or the trivial-init baseline) into OUT/oci
  benchtool base LAYOUT DIR       extract the base inputs of an OCI layout into DIR (as imagectl does)
  benchtool record BUILD.json     the record's outputs and step timings as Markdown tables
  benchtool get FILE.json KEY...  print top-level values of a JSON object, one per line
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtool:", err)
		os.Exit(1)
	}
}

func run(args []string, w io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}

	switch {
	case args[0] == "labbase" && (len(args) == 2 || len(args) == 3 && args[2] == "trivial"):
		return buildLabbase(args[1], len(args) == 3, w)
	case args[0] == "base" && len(args) == 3:
		return extractBase(args[1], args[2], w)
	case args[0] == "record" && len(args) == 2:
		return printRecord(args[1], w)
	case args[0] == "get" && len(args) >= 3:
		return get(args[1], args[2:], w)
	}

	return errors.New(usage)
}

// buildLabbase builds a lab base the way `make labbase` does, into the
// bench's own folder so the bench never depends on (or rewrites) _out/labbase.
func buildLabbase(out string, trivial bool, w io.Writer) error {
	res, err := labbase.Build(context.Background(), labbase.Options{Version: "1.0.0", TrivialInit: trivial, OutDir: out})
	if err != nil {
		return err
	}

	kind := "labos"
	if trivial {
		kind = "trivial init"
	}

	fmt.Fprintf(w, "lab base (%s): kernel %s, initramfs %.2f MB compressed, %d modules, layout %s\n",
		kind, res.KernelVersion, float64(res.InitramfsSize)/1e6, len(res.Modules), res.Digest)

	return nil
}

func extractBase(layout, dir string, w io.Writer) error {
	res, err := base.Resolve(context.Background(), base.Source{Layout: layout}, dir)
	if err != nil {
		return err
	}

	for _, name := range base.Inputs {
		f := res.Files[name]
		fmt.Fprintf(w, "%s sha256:%s %d\n", filepath.Base(f.Path), f.SHA256, f.Size)
	}

	return nil
}

func printRecord(path string, w io.Writer) error {
	rec, err := record.Load(path)
	if err != nil {
		return err
	}

	fmt.Fprintf(w, "| output | size (MB) | sha256 |\n| --- | ---: | --- |\n")

	for _, o := range rec.Outputs {
		size := "-"
		if o.Size > 0 {
			size = fmt.Sprintf("%.1f", float64(o.Size)/1e6)
		}

		fmt.Fprintf(w, "| %s (`%s`) | %s | `%.16s…` |\n", o.Kind, o.Path, size, o.SHA256)
	}

	fmt.Fprintf(w, "\n| build step (last forced build) | seconds |\n| --- | ---: |\n")

	for _, s := range rec.Steps {
		fmt.Fprintf(w, "| %s | %.3f |\n", s.Name, s.Seconds)
	}

	return nil
}

func get(path string, keys []string, w io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}

	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}

	for _, k := range keys {
		v, ok := m[k]
		if !ok {
			return fmt.Errorf("%s has no %q", path, k)
		}

		switch v := v.(type) {
		case string:
			fmt.Fprintln(w, v)
		default:
			out, _ := json.Marshal(v)
			fmt.Fprintln(w, string(out))
		}
	}

	return nil
}
