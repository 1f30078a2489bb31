package main

import (
	"github.com/spf13/cobra"
)

// commands is filled by the verb files' init functions, one verb per file.
var commands []func() *cobra.Command

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "imagectl",
		Short: "Build signed Talos UKIs, disk images and installer images",
		Long: `imagectl turns an image definition (images/<name>.yaml) into signed boot
artifacts: a Unified Kernel Image signed for Secure Boot with a signed PCR
policy, a bootable disk image with systemd-boot and auto-enrollment keys,
and an installer OCI image that nodes upgrade from.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}

	for _, c := range commands {
		root.AddCommand(c())
	}

	documentExitCodes(root)

	return root
}
