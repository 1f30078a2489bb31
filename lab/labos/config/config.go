// Package config finds the bootstrap configuration Talos's imager embeds in
// the initramfs (a system extension: /extensions.yaml naming squashfs
// layers, one holding usr/local/etc/talos/config.yaml), keeps the machine
// configuration a client applies in maintenance mode on STATE, and decodes
// the few fields labos uses.
//
// The embedded configuration holds no secret (imagectl refuses one that
// does): labos takes only add-on manifests from it and ignores any machine
// identity it might carry. The machine CA comes from the applied
// configuration, which lives only on the encrypted STATE volume.
//
// The fields are decoded with a small YAML struct instead of machinery's
// configloader: configloader alone adds ~14 MB to a stripped static binary
// (27 MB vs 13 MB for the gRPC API), which would double the initramfs labos
// unpacks on every emulated boot.
package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
	"github.com/siderolabs/talos/pkg/machinery/extensions"
	"gopkg.in/yaml.v3"
)

// EmbeddedPath is where the config lives inside its extension layer.
const EmbeddedPath = "usr/local/etc/talos/config.yaml"

// ExtensionsFile is the layer list at the initramfs root.
const ExtensionsFile = "extensions.yaml"

// ErrNotEmbedded means no extension layer carries a machine config.
var ErrNotEmbedded = errors.New("no embedded machine config")

// MaxSize bounds a machine config a client may send (Talos's own configs
// with inline manifests stay well below it).
const MaxSize = 8 << 20

// ReadEmbedded returns the embedded config's bytes, reading the squashfs
// layers in-process (no loop device or squashfs module needed).
func ReadEmbedded(root string) ([]byte, error) {
	var cfg extensions.Config

	if err := cfg.Read(filepath.Join(root, ExtensionsFile)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNotEmbedded
		}

		return nil, fmt.Errorf("reading %s: %w", ExtensionsFile, err)
	}

	// later layers are overlaid on top of earlier ones, so search backwards
	for i := len(cfg.Layers) - 1; i >= 0; i-- {
		img := filepath.Join(root, filepath.Clean("/"+cfg.Layers[i].Image))

		data, err := readFromSquashfs(img, EmbeddedPath)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}

		if err != nil {
			return nil, fmt.Errorf("reading layer %s: %w", cfg.Layers[i].Image, err)
		}

		return data, nil
	}

	return nil, ErrNotEmbedded
}

func readFromSquashfs(image, p string) ([]byte, error) {
	st, err := os.Stat(image)
	if err != nil {
		return nil, err
	}

	b, err := file.OpenFromPath(image, true)
	if err != nil {
		return nil, err
	}
	defer b.Close() //nolint:errcheck

	fs, err := squashfs.Read(b, st.Size(), 0, 0)
	if err != nil {
		return nil, fmt.Errorf("opening squashfs: %w", err)
	}

	// go-diskfs squashfs paths are relative to its root (no leading slash)
	f, err := fs.OpenFile(strings.TrimPrefix(path.Clean(p), "/"), os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", p, os.ErrNotExist, err)
	}
	defer f.Close() //nolint:errcheck

	return io.ReadAll(f)
}

// Machine is what labos uses from a machine config.
type Machine struct {
	CACert          []byte // PEM, machine.ca.crt
	CAKey           []byte // PEM, machine.ca.key
	CertSANs        []string
	InlineManifests []InlineManifest
	// HasV1Alpha1 is set when the config carries a v1alpha1 document.
	HasV1Alpha1 bool
}

// Complete reports whether m can run a node: labos needs the machine CA to
// issue its API certificate and to authenticate clients.
func (m *Machine) Complete() error {
	switch {
	case !m.HasV1Alpha1:
		return errors.New("machine config: no v1alpha1 document (machine.ca is required)")
	case len(m.CACert) == 0:
		return errors.New("machine config: machine.ca.crt is empty")
	case len(m.CAKey) == 0:
		return errors.New("machine config: machine.ca.key is empty")
	}

	return nil
}

// WithManifests returns m with extra inline manifests appended, skipping
// names m already has: the applied config wins over the embedded one.
func (m *Machine) WithManifests(extra []InlineManifest) *Machine {
	out := *m
	out.InlineManifests = append([]InlineManifest(nil), m.InlineManifests...)

	have := map[string]bool{}
	for _, im := range out.InlineManifests {
		have[im.Name] = true
	}

	for _, im := range extra {
		if !have[im.Name] {
			out.InlineManifests = append(out.InlineManifests, im)
			have[im.Name] = true
		}
	}

	return &out
}

// InlineManifest is cluster.inlineManifests[i].
type InlineManifest struct {
	Name     string
	Contents string
}

type document struct {
	Version string `yaml:"version"` // v1alpha1 document
	Kind    string `yaml:"kind"`    // typed documents (apiVersion/kind)
	Name    string `yaml:"name"`
	// Manifest is KubeInlineManifestConfig's manifest.
	Manifest string `yaml:"manifest"`
	Machine  struct {
		CA struct {
			Crt string `yaml:"crt"`
			Key string `yaml:"key"`
		} `yaml:"ca"`
		CertSANs []string `yaml:"certSANs"`
	} `yaml:"machine"`
	Cluster struct {
		InlineManifests []struct {
			Name     string `yaml:"name"`
			Contents string `yaml:"contents"`
		} `yaml:"inlineManifests"`
	} `yaml:"cluster"`
}

// KindInlineManifest is the typed document Talos 1.12+ uses for inline manifests.
const KindInlineManifest = "KubeInlineManifestConfig"

// Parse decodes a (multi-document) machine config: machine.ca from the
// v1alpha1 document, inline manifests from cluster.inlineManifests and from
// KubeInlineManifestConfig documents. A config without a v1alpha1 document
// (a bootstrap config) parses; Complete tells whether it can run a node.
func Parse(data []byte) (*Machine, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("machine config: %d bytes, more than the %d allowed", len(data), MaxSize)
	}

	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	m := &Machine{}
	docs := 0

	for {
		var doc document

		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("machine config: %w", err)
		}

		docs++

		switch {
		case doc.Version == "v1alpha1":
			if m.HasV1Alpha1 {
				return nil, errors.New("machine config: more than one v1alpha1 document")
			}

			m.HasV1Alpha1 = true
			m.CertSANs = doc.Machine.CertSANs

			if m.CACert, err = base64.StdEncoding.DecodeString(doc.Machine.CA.Crt); err != nil || len(m.CACert) == 0 {
				return nil, fmt.Errorf("machine config: machine.ca.crt: want base64 PEM (%v)", err)
			}

			if m.CAKey, err = base64.StdEncoding.DecodeString(doc.Machine.CA.Key); err != nil || len(m.CAKey) == 0 {
				return nil, fmt.Errorf("machine config: machine.ca.key: want base64 PEM (%v)", err)
			}

			for _, im := range doc.Cluster.InlineManifests {
				m.InlineManifests = append(m.InlineManifests, InlineManifest{Name: im.Name, Contents: im.Contents})
			}
		case doc.Kind == KindInlineManifest:
			m.InlineManifests = append(m.InlineManifests, InlineManifest{Name: doc.Name, Contents: doc.Manifest})
		}
	}

	if docs == 0 {
		return nil, errors.New("machine config: no document")
	}

	return m, nil
}
