// Package warm imports the heavy dependencies once so the module graph and
// build cache are primed; it is deleted once real packages import them.
package warm

import (
	_ "github.com/cilium/ebpf/features"
	_ "github.com/digitalocean/go-qemu/qmp"
	_ "github.com/diskfs/go-diskfs"
	_ "github.com/foxboron/go-uefi/efi"
	_ "github.com/google/go-containerregistry/pkg/registry"
	_ "github.com/google/go-containerregistry/pkg/v1/layout"
	_ "github.com/google/go-tpm/tpm2"
	_ "github.com/siderolabs/image-factory/pkg/schematic"
	_ "github.com/siderolabs/talos/pkg/imager"
	_ "github.com/siderolabs/talos/pkg/machinery/client"
	_ "github.com/siderolabs/talos/pkg/machinery/config/generate"
	_ "github.com/spf13/cobra"
	_ "github.com/stretchr/testify/require"
	_ "helm.sh/helm/v3/pkg/action"
	_ "modernc.org/sqlite"
	_ "github.com/u-root/u-root/pkg/cpio"
)
