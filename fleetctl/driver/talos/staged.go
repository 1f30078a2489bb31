package talos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
)

// Staged implements driver.StageChecker with ImageService.List in the
// containerd namespace Stage pulls into, as `talosctl image list
// --namespace system` shows it. An image counts as held when a listed
// image has its name or, for a reference pinned by digest (plans always
// are), its digest: containerd may list a pinned reference under a
// normalised name.
func (n *node) Staged(ctx context.Context, image string) (bool, int64, error) {
	list, err := n.c.ImageClient.List(ctx, &machineapi.ImageServiceListRequest{Containerd: systemContainerd})
	if err != nil {
		return false, 0, fmt.Errorf("listing images: %w", err)
	}

	_, digest, _ := strings.Cut(image, "@")

	for {
		img, err := list.Recv()
		if errors.Is(err, io.EOF) {
			return false, 0, nil
		}

		if err != nil {
			return false, 0, fmt.Errorf("listing images: %w", err)
		}

		if img.GetName() == image || (digest != "" && img.GetDigest() == digest) {
			return true, img.GetSize(), nil
		}
	}
}
