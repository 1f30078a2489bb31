// Package machineconfig generates labfleet's Talos machine configurations
// with Talos's machinery, in two kinds that must never be confused:
//
//   - Bootstrap is what an image may embed: typed documents without any
//     secret (VolumeConfig for the encrypted STATE and EPHEMERAL, one
//     KubeInlineManifestConfig per baked add-on, ImageCacheConfig). An image
//     is readable by whoever holds a disk, an ESP or an installer image, so
//     CheckNoSecrets refuses anything else before it is embedded.
//   - NodeConfig is a node's full configuration, generated from the keys
//     folder's secrets bundle and delivered after boot (maintenance mode):
//     no Talos-managed CNI (Cilium is baked in), kube-proxy disabled (Cilium
//     replaces it), the add-ons as inline manifests, STATE and EPHEMERAL
//     encrypted with TPM-sealed keys.
//
// Both are validated with machinery for a metal install.
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

// Node roles NodeConfig accepts (Talos's machine types).
const (
	RoleControlPlane = "controlplane"
	RoleWorker       = "worker"
)

// Manifest is one inline manifest: a name (the add-on) and its YAML.
type Manifest struct {
	Name     string
	Contents string
}

// Options describe the configuration to generate.
type Options struct {
	// ClusterName is the Kubernetes cluster name (NodeConfig only).
	ClusterName string
	// Endpoint is the control plane endpoint URL (https://host:6443)
	// (NodeConfig only).
	Endpoint string
	// SecretsPath is a machinery secrets bundle (secrets.yaml): the same
	// bundle gives the same CAs, tokens and so the same configuration
	// (NodeConfig only; Bootstrap never reads it).
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

// Bootstrap returns the configuration an image embeds, as multi-document
// YAML without comments: the encrypted-volume documents, the add-ons'
// inline manifests and the image cache switch; no v1alpha1 document and no
// secret (it is checked with CheckNoSecrets). Only Manifests,
// LocalImageCache and Patches are used. The same options give the same bytes.
func Bootstrap(opts Options) ([]byte, error) {
	docs := encryptedVolumes(nil)

	docs, err := appendManifests(docs, opts.Manifests)
	if err != nil {
		return nil, err
	}

	if opts.LocalImageCache {
		docs = append(docs, imageCache())
	}

	out, err := finish(docs, opts.Patches)
	if err != nil {
		return nil, fmt.Errorf("bootstrap config: %w", err)
	}

	if err := CheckNoSecrets(out); err != nil {
		return nil, fmt.Errorf("bootstrap config: %w", err)
	}

	return out, nil
}

// NodeConfig returns the full, validated machine configuration of a node
// with the given role (RoleControlPlane or RoleWorker), generated from the
// secrets bundle at opts.SecretsPath, as multi-document YAML without
// comments. It holds the cluster's secrets: it is delivered to a node after
// boot and must never be embedded in an image. A control plane also gets
// the add-ons' inline manifests (Talos applies them from control planes
// only); both roles get the encrypted STATE and EPHEMERAL volumes and the
// image cache switch. The same options give the same bytes.
func NodeConfig(opts Options, role string) ([]byte, error) {
	var mt machine.Type

	switch role {
	case RoleControlPlane:
		mt = machine.TypeControlPlane
	case RoleWorker:
		mt = machine.TypeWorker
	default:
		return nil, fmt.Errorf("node role %q: want %q or %q", role, RoleControlPlane, RoleWorker)
	}

	if opts.ClusterName == "" {
		return nil, errors.New("cluster name is required")
	}

	if opts.Endpoint == "" {
		return nil, errors.New("control plane endpoint is required")
	}

	if opts.SecretsPath == "" {
		return nil, errors.New("secrets bundle path is required (the keys folder's secrets.yaml)")
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

	prov, err := in.Config(mt)
	if err != nil {
		return nil, fmt.Errorf("generating machine config: %w", err)
	}

	docs, err := bakeDocuments(prov.Documents(), mt)
	if err != nil {
		return nil, err
	}

	docs = encryptedVolumes(docs)

	if mt == machine.TypeControlPlane {
		if docs, err = appendManifests(docs, opts.Manifests); err != nil {
			return nil, err
		}
	}

	if opts.LocalImageCache {
		docs = append(docs, imageCache())
	}

	return finish(docs, opts.Patches)
}

func imageCache() *cri.ImageCacheConfigV1Alpha1 {
	ic := cri.NewImageCacheConfigV1Alpha1()
	ic.LocalConfig.ConfigEnabled = new(true)

	return ic
}

// finish assembles, patches, validates (metal) and encodes documents.
func finish(docs []cfgdoc.Document, patches [][]byte) ([]byte, error) {
	var cfg config.Provider

	cfg, err := container.New(docs...)
	if err != nil {
		return nil, fmt.Errorf("assembling machine config: %w", err)
	}

	if len(patches) > 0 {
		cfg, err = applyPatches(cfg, patches)
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
// Flannel document and no custom CNI manifest Talos runs CNI "none") and
// kube-proxy disabled (Cilium replaces both). Only a control plane's config
// carries the KubeProxyConfig document (it is control-plane only).
func bakeDocuments(in []cfgdoc.Document, mt machine.Type) ([]cfgdoc.Document, error) {
	var (
		out      []cfgdoc.Document
		sawProxy bool
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

	if !sawProxy && mt == machine.TypeControlPlane {
		return nil, errors.New("generated machine config has no KubeProxyConfig document to disable")
	}

	return out, nil
}

// appendManifests adds one KubeInlineManifestConfig document per add-on.
func appendManifests(docs []cfgdoc.Document, manifests []Manifest) ([]cfgdoc.Document, error) {
	seen := map[string]bool{}

	for _, m := range manifests {
		if seen[m.Name] {
			return nil, fmt.Errorf("inline manifest %q given twice", m.Name)
		}

		seen[m.Name] = true

		doc := k8s.NewKubeInlineManifestConfigV1Alpha1()
		doc.MetaName = m.Name
		doc.ManifestSpec = m.Contents
		docs = append(docs, doc)
	}

	return docs, nil
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
