// Package machineconfig generates the Talos machine configuration embedded
// in labfleet images: generated with Talos's machinery from a secrets
// bundle, with no Talos-managed CNI (Cilium is baked in), kube-proxy
// disabled (Cilium replaces it) and the rendered add-ons as inline
// manifests; then validated with machinery for a metal install.
package machineconfig

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/config"
	cfgdoc "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/container"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/types/cri"
	"github.com/siderolabs/talos/pkg/machinery/config/types/k8s"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// Manifest is one inline manifest: a name (the add-on) and its YAML.
type Manifest struct {
	Name     string
	Contents string
}

// Options describe the configuration to generate.
type Options struct {
	// ClusterName is the Kubernetes cluster name.
	ClusterName string
	// Endpoint is the control plane endpoint URL (https://host:6443).
	Endpoint string
	// SecretsPath is a machinery secrets bundle (secrets.yaml): the same
	// bundle gives the same CAs, tokens and so the same configuration.
	SecretsPath string
	// KubernetesVersion defaults to the machinery release's default.
	KubernetesVersion string
	// InstallDisk is the disk a metal install targets; default /dev/vda
	// (the lab's virtio disk).
	InstallDisk string
	// Manifests become KubeInlineManifestConfig documents, in this order.
	Manifests []Manifest
	// LocalImageCache enables Talos's image cache on the IMAGECACHE
	// partition (an ImageCacheConfig document), where the add-on images are.
	LocalImageCache bool
	// Patches are machine config patches (strategic merge or JSON6902)
	// applied after generation, in order: the per-site patch goes here.
	Patches [][]byte
}

// metalMode is the runtime mode config validation checks against: a bare
// metal node that installs to disk, as the lab's VMs and real sites are.
type metalMode struct{}

func (metalMode) String() string        { return "metal" }
func (metalMode) RequiresInstall() bool { return true }
func (metalMode) InContainer() bool     { return false }

// Generate returns the validated machine configuration (control plane) as
// multi-document YAML without comments. The same options give the same bytes.
func Generate(opts Options) ([]byte, error) {
	if opts.ClusterName == "" {
		return nil, errors.New("cluster name is required")
	}

	if opts.Endpoint == "" {
		return nil, errors.New("control plane endpoint is required")
	}

	if opts.SecretsPath == "" {
		return nil, errors.New("secrets bundle path is required")
	}

	bundle, err := secrets.LoadBundle(opts.SecretsPath)
	if err != nil {
		return nil, fmt.Errorf("loading secrets bundle %s: %w", opts.SecretsPath, err)
	}

	kv := opts.KubernetesVersion
	if kv == "" {
		kv = constants.DefaultKubernetesVersion
	}

	disk := opts.InstallDisk
	if disk == "" {
		disk = "/dev/vda"
	}

	in, err := generate.NewInput(opts.ClusterName, opts.Endpoint, kv,
		generate.WithSecretsBundle(bundle),
		generate.WithInstallDisk(disk),
		// Lab clusters are one node: workloads run on the control plane.
		generate.WithAllowSchedulingOnControlPlanes(true),
	)
	if err != nil {
		return nil, fmt.Errorf("machine config input: %w", err)
	}

	prov, err := in.Config(machine.TypeControlPlane)
	if err != nil {
		return nil, fmt.Errorf("generating machine config: %w", err)
	}

	docs, err := bakeDocuments(prov.Documents(), opts.Manifests)
	if err != nil {
		return nil, err
	}

	if opts.LocalImageCache {
		ic := cri.NewImageCacheConfigV1Alpha1()
		ic.LocalConfig.ConfigEnabled = new(true)
		docs = append(docs, ic)
	}

	var cfg config.Provider

	cfg, err = container.New(docs...)
	if err != nil {
		return nil, fmt.Errorf("assembling machine config: %w", err)
	}

	if len(opts.Patches) > 0 {
		cfg, err = applyPatches(cfg, opts.Patches)
		if err != nil {
			return nil, err
		}
	}

	if err := validate(cfg); err != nil {
		return nil, err
	}

	out, err := cfg.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		return nil, fmt.Errorf("encoding machine config: %w", err)
	}

	return out, nil
}

// bakeDocuments turns Talos's defaults into labfleet's: no Flannel (with no
// Flannel document and no custom CNI manifest Talos runs CNI "none"),
// kube-proxy disabled, and one inline manifest per add-on.
func bakeDocuments(in []cfgdoc.Document, manifests []Manifest) ([]cfgdoc.Document, error) {
	var (
		out       []cfgdoc.Document
		sawProxy  bool
		seenNames = map[string]bool{}
	)

	for _, d := range in {
		switch doc := d.(type) {
		case *k8s.KubeFlannelCNIConfigV1Alpha1:
			continue
		case *k8s.KubeProxyConfigV1Alpha1:
			doc.ProxyEnabled = new(false)
			sawProxy = true
		}

		out = append(out, d)
	}

	if !sawProxy {
		return nil, errors.New("generated machine config has no KubeProxyConfig document to disable")
	}

	for _, m := range manifests {
		if seenNames[m.Name] {
			return nil, fmt.Errorf("inline manifest %q given twice", m.Name)
		}

		seenNames[m.Name] = true

		doc := k8s.NewKubeInlineManifestConfigV1Alpha1()
		doc.MetaName = m.Name
		doc.ManifestSpec = m.Contents
		out = append(out, doc)
	}

	return out, nil
}

func applyPatches(cfg config.Provider, raw [][]byte) (config.Provider, error) {
	patches := make([]configpatcher.Patch, 0, len(raw))

	for i, r := range raw {
		p, err := configpatcher.LoadPatch(r)
		if err != nil {
			return nil, fmt.Errorf("loading machine config patch %d: %w", i, err)
		}

		patches = append(patches, p)
	}

	out, err := configpatcher.Apply(configpatcher.WithConfig(cfg), patches)
	if err != nil {
		return nil, fmt.Errorf("applying machine config patches: %w", err)
	}

	patched, err := out.Config()
	if err != nil {
		return nil, fmt.Errorf("applying machine config patches: %w", err)
	}

	return patched, nil
}

func validate(cfg config.Provider) error {
	if _, err := cfg.Validate(metalMode{}); err != nil {
		return fmt.Errorf("validating machine config: %w", err)
	}

	return nil
}

// Validate parses a machine configuration and validates it with machinery
// for a metal install; it returns machinery's warnings.
func Validate(data []byte) ([]string, error) {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("parsing machine config: %w", err)
	}

	warnings, err := cfg.Validate(metalMode{})
	if err != nil {
		return warnings, fmt.Errorf("validating machine config: %w", err)
	}

	return warnings, nil
}

// InlineManifests returns the inline manifests of a machine configuration
// by name: what a booted image will apply.
func InlineManifests(data []byte) ([]Manifest, error) {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("parsing machine config: %w", err)
	}

	var out []Manifest

	for _, d := range cfg.Documents() {
		if m, ok := d.(*k8s.KubeInlineManifestConfigV1Alpha1); ok {
			out = append(out, Manifest{Name: m.MetaName, Contents: m.ManifestSpec})
		}
	}

	return out, nil
}

// LocalImageCacheEnabled reports whether the configuration turns on the
// image cache partition.
func LocalImageCacheEnabled(data []byte) (bool, error) {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return false, fmt.Errorf("parsing machine config: %w", err)
	}

	ic := cfg.ImageCacheConfig()

	return ic != nil && ic.LocalEnabled(), nil
}

// ProxyDisabled reports whether the configuration disables kube-proxy.
func ProxyDisabled(data []byte) (bool, error) {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return false, fmt.Errorf("parsing machine config: %w", err)
	}

	p := cfg.K8sProxyConfig()

	return p != nil && !p.Enabled(), nil
}

// FlannelAbsent reports whether the configuration leaves CNI to the
// inline manifests (Talos's CNI "none").
func FlannelAbsent(data []byte) (bool, error) {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return false, fmt.Errorf("parsing machine config: %w", err)
	}

	return cfg.K8sFlannelCNIConfig() == nil, nil
}

// InlineManifestPatch returns a machine config patch that replaces (or
// adds) the named inline manifests: the per-site patch.
func InlineManifestPatch(manifests []Manifest) ([]byte, error) {
	var buf bytes.Buffer

	for i, m := range manifests {
		doc := k8s.NewKubeInlineManifestConfigV1Alpha1()
		doc.MetaName = m.Name
		doc.ManifestSpec = m.Contents

		b, err := encoder.NewEncoder(doc, encoder.WithComments(encoder.CommentsDisabled)).Encode()
		if err != nil {
			return nil, fmt.Errorf("encoding inline manifest %s: %w", m.Name, err)
		}

		if i > 0 {
			buf.WriteString("---\n")
		}

		buf.Write(b)

		if !strings.HasSuffix(string(b), "\n") {
			buf.WriteByte('\n')
		}
	}

	return buf.Bytes(), nil
}

// KubePrismPort returns the port of KubePrism, Talos's node-local API server
// load balancer (0 when disabled): Cilium must be pointed at it.
func KubePrismPort(data []byte) (int, error) {
	cfg, err := configloader.NewFromBytes(data)
	if err != nil {
		return 0, fmt.Errorf("parsing machine config: %w", err)
	}

	kp := cfg.K8sKubePrismConfig()
	if kp == nil {
		return 0, nil
	}

	return kp.Port(), nil
}
