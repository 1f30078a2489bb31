// Package spec defines an image definition (images/<name>.yaml): what to
// build, from which base, with which schematic, add-ons, keys and outputs.
package spec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/siderolabs/image-factory/pkg/schematic"
	"github.com/siderolabs/talos/pkg/machinery/imager/imageropts"
	"gopkg.in/yaml.v3"
)

// Definition is one image definition.
type Definition struct {
	// Name of the image: lowercase letters, digits and dashes. It names the
	// output folder (_out/<name>/) and the boot entries (EFI/Linux/<name>-<version>.efi).
	Name string `yaml:"name" json:"name"`
	// Version of the image, e.g. 1.0.0. Reported by the node and used to
	// order boot entries; a newer image must have a higher version.
	Version string `yaml:"version" json:"version"`
	// TalosVersion selects the Talos generation whose imager rules apply
	// (kernel args, compression, UKI layout), e.g. v1.14.1.
	TalosVersion string `yaml:"talosVersion" json:"talosVersion"`
	// Base says where the kernel, initramfs, systemd-stub and systemd-boot come from.
	Base Base `yaml:"base" json:"base"`
	// Schematic is an image-factory schematic (extra kernel args, meta,
	// system extensions, secureboot options); its ID is reported in the build record.
	Schematic schematic.Schematic `yaml:"schematic" json:"schematic"`
	// Addons lists the platform add-ons (extensions/<name>/) to bake in.
	Addons []string `yaml:"addons,omitempty" json:"addons,omitempty"`
	// Cluster is used to generate the embedded machine configuration.
	Cluster Cluster `yaml:"cluster" json:"cluster"`
	// Keys is the keys directory made by `imagectl keys generate`
	// (relative to the repository root, or absolute). --keys overrides it.
	Keys string `yaml:"keys" json:"keys"`
	// Outputs lists the artifacts to produce: uki, disk, installer.
	Outputs []string `yaml:"outputs" json:"outputs"`
	// Disk sizes the disk image (only with the disk output).
	Disk Disk `yaml:"disk,omitempty" json:"disk"`
	// Installer says where the installer image goes (only with the installer output).
	Installer Installer `yaml:"installer,omitempty" json:"installer"`
	// Lab marks a lab definition: only a lab definition may bake stand-in
	// add-ons (pins.source: standin, digests that exist only in the
	// project's stand-in mirror). Production definitions leave it unset.
	Lab bool `yaml:"lab,omitempty" json:"lab,omitempty"`
	// SideroLink, if set, makes the image's nodes enroll at a fleet hub
	// (kernel arguments in Talos's form; see siderolink.go).
	SideroLink *SideroLink `yaml:"sideroLink,omitempty" json:"sideroLink,omitempty"`

	// file is where the definition was read from, for errors found later
	// (e.g. by the baker, which reads the add-ons).
	file string
}

// File is the path the definition was parsed from.
func (d *Definition) File() string { return d.file }

// Base is exactly one of Image or Layout: an OCI image in the layout of
// Talos's imager image (usr/install/<arch>/{vmlinuz,initramfs.xz,systemd-stub.efi,systemd-boot.efi}).
type Base struct {
	// Image is an OCI reference such as ghcr.io/siderolabs/imager:v1.14.1.
	Image string `yaml:"image,omitempty" json:"image,omitempty"`
	// Layout is a local OCI image layout directory (the lab base lives in _out/labbase/oci).
	Layout string `yaml:"layout,omitempty" json:"layout,omitempty"`
	// Digest pins the base manifest (sha256:...): the build fails if the
	// resolved image has another digest.
	Digest string `yaml:"digest,omitempty" json:"digest,omitempty"`
	// Insecure allows plain-HTTP registries (only for local test registries).
	Insecure bool `yaml:"insecure,omitempty" json:"insecure,omitempty"`
}

// Cluster holds what the embedded machine configuration needs.
type Cluster struct {
	// Name of the Kubernetes cluster.
	Name string `yaml:"name" json:"name"`
	// Endpoint is the Kubernetes API endpoint, https://host:port.
	Endpoint string `yaml:"endpoint" json:"endpoint"`
}

// Disk sizes the partitions of the disk image, in MiB.
type Disk struct {
	// ESPMiB is the EFI system partition size (holds systemd-boot and up to a few UKIs).
	ESPMiB int `yaml:"espMiB,omitempty" json:"espMiB"`
	// ImageCacheMiB is the IMAGECACHE partition size; 0 sizes it to the cache.
	ImageCacheMiB int `yaml:"imageCacheMiB,omitempty" json:"imageCacheMiB"`
	// StateMiB is the room left for the encrypted STATE partition the node creates on first boot.
	StateMiB int `yaml:"stateMiB,omitempty" json:"stateMiB"`
}

// Installer says where to put the installer image.
type Installer struct {
	// Repository to push to, e.g. registry.example.com/labfleet/installer;
	// empty writes only an OCI layout under _out/<name>/installer/.
	Repository string `yaml:"repository,omitempty" json:"repository,omitempty"`
	// Base is the installer-base image the installer is assembled from by
	// Talos's imager (its installer output): in production
	// ghcr.io/siderolabs/installer-base:<talosVersion>, in the lab the
	// stand-in layout `make labbase` writes (_out/labbase/installer-base).
	// Same fields as base: one of image or layout, optional digest pin;
	// unset means ghcr.io/siderolabs/installer-base:<talosVersion>.
	Base Base `yaml:"base,omitempty" json:"base"`
}

// DefaultInstallerBase is Talos's installer-base repository
// (Talos pkg/images DefaultInstallerBaseImageRepository).
const DefaultInstallerBase = "ghcr.io/siderolabs/installer-base"

// Output kinds.
const (
	OutputUKI       = "uki"
	OutputDisk      = "disk"
	OutputInstaller = "installer"
)

// KnownOutputs lists the output kinds in build order.
var KnownOutputs = []string{OutputUKI, OutputDisk, OutputInstaller}

// FieldError names the file and field that are wrong and what is allowed.
type FieldError struct {
	File  string
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}

	return fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg)
}

var (
	nameRE    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,39}$`)
	versionRE = regexp.MustCompile(`^v?[0-9]+(\.[0-9]+){0,3}([.-][0-9A-Za-z.]+)?$`)
	digestRE  = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

// Load reads and validates a definition file, filling defaults.
func Load(path string) (*Definition, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading image definition: %w", err)
	}

	return Parse(path, data)
}

// Parse decodes a definition, rejecting unknown fields, then fills defaults and validates.
func Parse(file string, data []byte) (*Definition, error) {
	var d Definition

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%s: %w (fields are documented in images/README.md)", file, err)
	}

	d.file = file
	d.Defaults()

	if err := d.Validate(file); err != nil {
		return nil, err
	}

	return &d, nil
}

// Defaults fills unset optional fields.
func (d *Definition) Defaults() {
	if len(d.Outputs) == 0 {
		d.Outputs = []string{OutputUKI, OutputDisk, OutputInstaller}
	}

	if d.Disk.ESPMiB == 0 {
		d.Disk.ESPMiB = 128
	}

	if d.Disk.StateMiB == 0 {
		d.Disk.StateMiB = 256
	}

	if d.Keys == "" {
		d.Keys = "_out/keys"
	}

	// Talos's imager defaults its base installer the same way
	// (profile.Input.FillDefaults).
	if d.Installer.Base.Image == "" && d.Installer.Base.Layout == "" {
		d.Installer.Base.Image = DefaultInstallerBase + ":" + d.TalosVersion
	}

	if d.Cluster.Name == "" {
		d.Cluster.Name = d.Name
	}

	if d.Cluster.Endpoint == "" {
		d.Cluster.Endpoint = "https://127.0.0.1:6443"
	}

	if d.SideroLink != nil {
		d.SideroLink.defaults()
	}
}

// Validate checks every field; file names the definition in errors.
func (d *Definition) Validate(file string) error {
	var errs []error

	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{File: file, Field: field, Msg: fmt.Sprintf(format, args...)})
	}

	if !nameRE.MatchString(d.Name) {
		bad("name", "%q is not allowed: use 1-40 lowercase letters, digits and dashes, starting with a letter", d.Name)
	}

	if !versionRE.MatchString(d.Version) {
		bad("version", "%q is not a version: use digits and dots such as 1.0.0", d.Version)
	}

	if strings.Contains(d.Version, "+") {
		bad("version", "%q must not contain '+': systemd-boot reads '+' as the boot counter", d.Version)
	}

	if !versionRE.MatchString(d.TalosVersion) || !strings.HasPrefix(d.TalosVersion, "v1.") {
		bad("talosVersion", "%q is not a Talos version such as v1.14.1", d.TalosVersion)
	}

	switch {
	case d.Base.Image == "" && d.Base.Layout == "":
		bad("base", "set one of base.image (an OCI reference) or base.layout (an OCI layout directory)")
	case d.Base.Image != "" && d.Base.Layout != "":
		bad("base", "base.image and base.layout are exclusive: set only one")
	}

	if d.Base.Digest != "" && !digestRE.MatchString(d.Base.Digest) {
		bad("base.digest", "%q is not a digest: use sha256:<64 hex digits>", d.Base.Digest)
	}

	if err := d.Schematic.Validate(false); err != nil {
		bad("schematic", "%v", err)
	}

	// Only the parts of a schematic that shape a UKI built from local
	// inputs are implemented; the rest would change the schematic ID
	// without changing the image, so they are refused rather than ignored.
	c := d.Schematic.Customization
	if len(c.SystemExtensions.OfficialExtensions) > 0 {
		bad("schematic.customization.systemExtensions", "not supported by imagectl yet: bake add-ons with the addons field instead")
	}

	// enrollKeys is honoured as image-factory honours it (loader.conf's
	// secure-boot-enroll); the well-known Microsoft certificates are not
	// shipped with imagectl, so asking for them is refused.
	if c.SecureBoot.EnrollKeys != "" && !slices.Contains(EnrollModes, c.SecureBoot.EnrollKeys) {
		bad("schematic.customization.secureboot.enrollKeys", "%q is not allowed: use off, manual, if-safe or force (Talos v1.14 imager's sdBootEnrollKeys; empty means if-safe)", c.SecureBoot.EnrollKeys)
	}

	if c.SecureBoot.IncludeWellKnownCertificates {
		bad("schematic.customization.secureboot.includeWellKnownCertificates", "not supported: keys come from the keys directory only; remove the field")
	}

	// image-factory embeds this string as the machine config; imagectl embeds
	// only the secret-free bootstrap config (machineconfig.Bootstrap) and
	// delivers node configs after boot, so a second embedded config is
	// refused instead of changing the schematic ID and being dropped.
	if c.EmbeddedMachineConfiguration != "" {
		bad("schematic.customization.embeddedMachineConfiguration", "not supported: images embed only the secret-free bootstrap config; remove the field and deliver the node's config after boot (labctl / fleetctl, see docs/contracts.md: first boot)")
	}

	if c.Bootloader != imageropts.BootLoaderKindNone && c.Bootloader != imageropts.BootLoaderKindSDBoot {
		bad("schematic.customization.bootloader", "%q is not supported: images boot with systemd-boot (sd-boot)", c.Bootloader)
	}

	if c.DiskImage.SectorSize != 0 && c.DiskImage.SectorSize != 512 {
		bad("schematic.customization.diskImage.sectorSize", "%d is not supported: disk images use 512-byte sectors", c.DiskImage.SectorSize)
	}

	if d.Schematic.Overlay.Image != "" || d.Schematic.Overlay.Name != "" {
		bad("schematic.overlay", "overlays (SBC boards) are not supported: images are for UEFI x86-64 machines")
	}

	if d.SideroLink != nil {
		d.SideroLink.validate(bad, c.ExtraKernelArgs)
	}

	if len(d.Outputs) == 0 {
		bad("outputs", "list at least one of %s", strings.Join(KnownOutputs, ", "))
	}

	seen := map[string]bool{}

	for i, o := range d.Outputs {
		if !slices.Contains(KnownOutputs, o) {
			bad(fmt.Sprintf("outputs[%d]", i), "%q is unknown: allowed are %s", o, strings.Join(KnownOutputs, ", "))
		}

		if seen[o] {
			bad(fmt.Sprintf("outputs[%d]", i), "%q is listed twice", o)
		}

		seen[o] = true
	}

	if (seen[OutputDisk] || seen[OutputInstaller]) && !seen[OutputUKI] {
		bad("outputs", "disk and installer outputs carry the UKI: add %q", OutputUKI)
	}

	if ib := d.Installer.Base; ib.Image != "" && ib.Layout != "" {
		bad("installer.base", "installer.base.image and installer.base.layout are exclusive: set only one")
	}

	if d.Installer.Base.Digest != "" && !digestRE.MatchString(d.Installer.Base.Digest) {
		bad("installer.base.digest", "%q is not a digest: use sha256:<64 hex digits>", d.Installer.Base.Digest)
	}

	for i, a := range d.Addons {
		if !nameRE.MatchString(a) {
			bad(fmt.Sprintf("addons[%d]", i), "%q is not an add-on name (see extensions/)", a)
		}
	}

	if d.Disk.ESPMiB < 64 || d.Disk.ESPMiB > 4096 {
		bad("disk.espMiB", "%d is out of range: use 64 to 4096 (FAT32 needs at least 64 MiB here)", d.Disk.ESPMiB)
	}

	if d.Disk.StateMiB < 32 {
		bad("disk.stateMiB", "%d is too small: use at least 32", d.Disk.StateMiB)
	}

	if d.Disk.ImageCacheMiB < 0 {
		bad("disk.imageCacheMiB", "must not be negative")
	}

	if !strings.HasPrefix(d.Cluster.Endpoint, "https://") {
		bad("cluster.endpoint", "%q must be an https:// URL", d.Cluster.Endpoint)
	}

	return errors.Join(errs...)
}

// Key enrollment modes: systemd-boot's loader.conf secure-boot-enroll
// values, the choices of Talos v1.14's imager (profile.SDBootEnrollKeys) and
// of image-factory's schematic customization.secureboot.enrollKeys.
const (
	// EnrollOff: systemd-boot never enrolls; keys are enrolled from the firmware setup.
	EnrollOff = "off"
	// EnrollManual: systemd-boot offers an "Enroll Secure Boot keys" menu entry.
	EnrollManual = "manual"
	// EnrollIfSafe: automatic enrollment, but only inside a virtual machine
	// (systemd-boot's judgement); on bare metal nothing is enrolled.
	EnrollIfSafe = "if-safe"
	// EnrollForce: automatic enrollment whenever the firmware is in setup
	// mode, also on bare metal, where firmware that needs vendor keys (option
	// ROMs signed by Microsoft's CA) may then fail to start its devices.
	EnrollForce = "force"
)

// EnrollModes lists the allowed enrollment modes.
var EnrollModes = []string{EnrollOff, EnrollManual, EnrollIfSafe, EnrollForce}

// EnrollKeys is the enrollment mode written to loader.conf: the schematic's
// customization.secureboot.enrollKeys, or if-safe (image-factory's default).
func (d *Definition) EnrollKeys() string {
	if m := d.Schematic.Customization.SecureBoot.EnrollKeys; m != "" {
		return m
	}

	return EnrollIfSafe
}

// Wants reports whether output kind o is requested.
func (d *Definition) Wants(o string) bool { return slices.Contains(d.Outputs, o) }

// SchematicID is image-factory's ID of the schematic.
func (d *Definition) SchematicID() (string, error) {
	id, err := d.Schematic.ID()
	if err != nil {
		return "", fmt.Errorf("computing schematic ID: %w", err)
	}

	return id, nil
}

// ID is the sha256 of the definition's canonical encoding.
func (d *Definition) ID() (string, error) {
	data, err := yaml.Marshal(d)
	if err != nil {
		return "", fmt.Errorf("encoding definition: %w", err)
	}

	sum := sha256.Sum256(data)

	return hex.EncodeToString(sum[:]), nil
}

// ResolvePath makes p absolute relative to root unless it already is.
func ResolvePath(root, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}

	return filepath.Join(root, p)
}
