package spec_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/images/spec"
)

func TestShippedDefinitionsValidate(t *testing.T) {
	files, err := filepath.Glob("../*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)

	for _, f := range files {
		d, err := spec.Load(f)
		require.NoError(t, err, f)

		id, err := d.SchematicID()
		require.NoError(t, err)
		require.Len(t, id, 64)
	}
}

func TestEmptySchematicIDMatchesImageFactory(t *testing.T) {
	d, err := spec.Parse("x.yaml", []byte("name: x\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\n"))
	require.NoError(t, err)

	id, err := d.SchematicID()
	require.NoError(t, err)
	// The ID image-factory reports for the empty schematic.
	require.Equal(t, "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba", id)
}

func TestValidationNamesFileAndField(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"bad name", "name: Lab_1\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\n", "bad.yaml: name:"},
		{"plus in version", "name: lab\nversion: 1.0.0+3\ntalosVersion: v1.14.1\nbase: {layout: l}\n", "boot counter"},
		{"no base", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\n", "bad.yaml: base:"},
		{"both bases", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l, image: i}\n", "exclusive"},
		{"bad digest", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l, digest: abc}\n", "base.digest"},
		{"unknown output", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\noutputs: [uki, iso]\n", "outputs[1]: \"iso\" is unknown"},
		{"disk without uki", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\noutputs: [disk]\n", "add \"uki\""},
		{"unknown field", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\ncolour: red\n", "field colour not found"},
		{"small esp", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\ndisk: {espMiB: 8}\n", "disk.espMiB"},
		{"system extensions", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\nschematic: {customization: {systemExtensions: {officialExtensions: [siderolabs/iscsi-tools]}}}\n", "systemExtensions: not supported"},
		{"embedded machine configuration", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\nschematic: {customization: {embeddedMachineConfiguration: \"apiVersion: v1alpha1\\nkind: ImageCacheConfig\\n\"}}\n", "bad.yaml: schematic.customization.embeddedMachineConfiguration: not supported"},
		{"talos version", "name: lab\nversion: 1.0.0\ntalosVersion: 1.14\nbase: {layout: l}\n", "talosVersion"},
		{"both installer bases", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\ninstaller: {base: {layout: l, image: i}}\n", "bad.yaml: installer.base: installer.base.image and installer.base.layout are exclusive"},
		{"bad installer base digest", "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\ninstaller: {base: {layout: l, digest: abc}}\n", "bad.yaml: installer.base.digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := spec.Parse("bad.yaml", []byte(tc.yaml))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// An unset installer.base is Talos's installer-base of the definition's
// Talos version, as Talos's imager defaults it.
func TestInstallerBaseDefault(t *testing.T) {
	d, err := spec.Parse("x.yaml", []byte("name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\n"))
	require.NoError(t, err)
	require.Equal(t, "ghcr.io/siderolabs/installer-base:v1.14.1", d.Installer.Base.Image)

	d, err = spec.Parse("x.yaml", []byte("name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\ninstaller: {base: {layout: ib}}\n"))
	require.NoError(t, err)
	require.Empty(t, d.Installer.Base.Image)
	require.Equal(t, "ib", d.Installer.Base.Layout)
}

func TestLoadMissingFile(t *testing.T) {
	_, err := spec.Load(filepath.Join(t.TempDir(), "nope.yaml"))
	require.Error(t, err)
	require.True(t, os.IsNotExist(errorsUnwrapAll(err)))
}

func errorsUnwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}

		err = u.Unwrap()
	}
}

func TestEnrollKeysModes(t *testing.T) {
	const head = "name: x\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\n"

	d, err := spec.Parse("x.yaml", []byte(head))
	require.NoError(t, err)
	require.Equal(t, spec.EnrollIfSafe, d.EnrollKeys(), "image-factory's default")

	for _, mode := range []string{"off", "manual", "if-safe", "force"} {
		d, err := spec.Parse("x.yaml", []byte(head+"schematic: {customization: {secureboot: {enrollKeys: "+mode+"}}}\n"))
		require.NoError(t, err, mode)
		require.Equal(t, mode, d.EnrollKeys())
	}

	_, err = spec.Parse("bad.yaml", []byte(head+"schematic: {customization: {secureboot: {enrollKeys: always}}}\n"))
	require.Error(t, err)
	require.Contains(t, err.Error(), `bad.yaml: schematic.customization.secureboot.enrollKeys: "always" is not allowed: use off, manual, if-safe or force`)

	_, err = spec.Parse("bad.yaml", []byte(head+"schematic: {customization: {secureboot: {includeWellKnownCertificates: true}}}\n"))
	require.Error(t, err)
	require.Contains(t, err.Error(), "bad.yaml: schematic.customization.secureboot.includeWellKnownCertificates: not supported")
}

func TestShippedEnrollModes(t *testing.T) {
	lab, err := spec.Load("../lab.yaml")
	require.NoError(t, err)
	require.Equal(t, spec.EnrollIfSafe, lab.EnrollKeys(), "the lab enrolls inside VMs only")

	edge, err := spec.Load("../edge.yaml")
	require.NoError(t, err)
	require.Equal(t, spec.EnrollForce, edge.EnrollKeys(), "bare metal enrolls unattended")
}

func TestLabMarking(t *testing.T) {
	lab, err := spec.Load("../lab.yaml")
	require.NoError(t, err)
	require.True(t, lab.Lab, "images/lab.yaml is the lab definition")

	edge, err := spec.Load("../edge.yaml")
	require.NoError(t, err)
	require.False(t, edge.Lab, "images/edge.yaml is a production definition")
}

const sideroLinkBase = "name: lab\nversion: 1.0.0\ntalosVersion: v1.14.1\nbase: {layout: l}\n"

// The sideroLink field becomes Talos's kernel arguments, with the hub's
// defaults for the event sink and the log receiver.
func TestSideroLinkKernelArgs(t *testing.T) {
	d, err := spec.Parse("site.yaml", []byte(sideroLinkBase+"sideroLink: {api: \"grpc://hub.example:8099\", joinToken: lfj_abc, tunnel: true}\n"))
	require.NoError(t, err)
	require.Equal(t, []string{
		"siderolink.api=grpc://hub.example:8099?jointoken=lfj_abc&grpc_tunnel=true",
		"talos.events.sink=[fdae:41e4:649b:9303::1]:8090",
		"talos.logging.kernel=tcp://[fdae:41e4:649b:9303::1]:8092",
	}, d.SideroLink.KernelArgs())
}

// Bad sideroLink fields name the file and field; the token is never echoed.
func TestSideroLinkValidation(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"no api", "sideroLink: {joinToken: lfj_secret}\n", "site.yaml: sideroLink.api: required"},
		{"scheme", "sideroLink: {api: \"http://hub:80\", joinToken: lfj_secret}\n", `site.yaml: sideroLink.api: scheme "http" is not allowed`},
		{"grpc port", "sideroLink: {api: \"grpc://hub\", joinToken: lfj_secret}\n", "site.yaml: sideroLink.api: \"grpc://hub\" has no port"},
		{"token in url", "sideroLink: {api: \"grpc://hub?jointoken=lfj_secret\", joinToken: lfj_secret}\n", "site.yaml: sideroLink.api: give only scheme, host and port"},
		{"no token", "sideroLink: {api: \"grpc://hub:8099\"}\n", "site.yaml: sideroLink.joinToken: required"},
		{"token delimiter", "sideroLink: {api: \"grpc://hub:8099\", joinToken: \"lfj_secret&x=1\"}\n", "site.yaml: sideroLink.joinToken: contains a space, quote or URL delimiter"},
		{"hub address", "sideroLink: {api: \"grpc://hub:8099\", joinToken: lfj_secret, hubAddress: 10.0.0.1}\n", `site.yaml: sideroLink.hubAddress: "10.0.0.1" is not an IPv6 address`},
		{"port", "sideroLink: {api: \"grpc://hub:8099\", joinToken: lfj_secret, logsPort: 70000}\n", "site.yaml: sideroLink.logsPort: 70000 is not a port"},
		{"twice", "schematic: {customization: {extraKernelArgs: [\"siderolink.api=grpc://x:1\"]}}\nsideroLink: {api: \"grpc://hub:8099\", joinToken: lfj_secret}\n", "site.yaml: schematic.customization.extraKernelArgs: siderolink.api is set by sideroLink"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := spec.Parse("site.yaml", []byte(sideroLinkBase+tc.yaml))
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)

			require.NotContains(t, err.Error(), "lfj_secret")
		})
	}
}
