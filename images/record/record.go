// Package record is the build record contract (_out/<name>/build.json):
// written by imagectl, read by the lab, the tests and fleetctl.
package record

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// FileName is the record's name inside an output folder.
const FileName = "build.json"

// Input is one build input, pinned by digest.
type Input struct {
	Name   string `json:"name"`
	Ref    string `json:"ref,omitempty"`
	Digest string `json:"digest"`
	Size   int64  `json:"size,omitempty"`
}

// Output is one artifact.
type Output struct {
	Kind   string `json:"kind"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Ref is the pushed reference (installer pushed to a registry), by digest.
	Ref string `json:"ref,omitempty"`
}

// Step is how long one build step took.
type Step struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// AddonImage is a container image an add-on references, in the image cache.
type AddonImage struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

// Addon is one baked add-on.
type Addon struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	ChartDigest string `json:"chartDigest"`
	Source      string `json:"source,omitempty"`
	// Standin is true for an add-on pinned to the project's stand-ins
	// (Source "standin"): not the upstream software. Only lab definitions bake them.
	Standin bool         `json:"standin,omitempty"`
	Images  []AddonImage `json:"images"`
}

// Record describes one build.
type Record struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	TalosVersion string   `json:"talosVersion"`
	SchematicID  string   `json:"schematicID"`
	DefinitionID string   `json:"definitionID"`
	CacheKey     string   `json:"cacheKey"`
	Cmdline      string   `json:"cmdline"`
	Inputs       []Input  `json:"inputs"`
	Outputs      []Output `json:"outputs"`
	Addons       []Addon  `json:"addons,omitempty"`
	// Steps are the step timings of the build that just ran, for the CLI
	// (imagectl build -o json) and the bench. They vary run to run, so
	// build.json and the installer's copy leave them out (reproducible).
	Steps []Step `json:"steps,omitempty"`
	// SourceDateEpoch is the timestamp every artifact carries.
	SourceDateEpoch int64 `json:"sourceDateEpoch"`
	// Cached is true when this build was served from the cache.
	Cached bool `json:"cached"`
}

// Output returns the output of the given kind.
func (r *Record) Output(kind string) (Output, bool) {
	for _, o := range r.Outputs {
		if o.Kind == kind {
			return o, true
		}
	}

	return Output{}, false
}

// Load reads a record from a file or from an output folder.
func Load(path string) (*Record, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, FileName)
	}

	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading build record: %w", err)
	}

	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decoding build record %s: %w", path, err)
	}

	return &r, nil
}

// Marshal encodes the record as indented JSON.
func (r *Record) Marshal() ([]byte, error) {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding build record: %w", err)
	}

	return append(data, '\n'), nil
}
