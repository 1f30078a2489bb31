package driver

import "context"

// Stager is implemented by nodes that can take an upgrade in two steps, as
// Talos 1.13+ does (talosctl image pull, then upgrade): Stage pulls and
// verifies the image ahead of the maintenance window, over whatever link
// the site has; Switch then installs the image the node already holds and
// reboots into it, so the window only needs the reboot.
type Stager interface {
	// Stage has the node pull image without changing what it boots.
	Stage(ctx context.Context, image string) error
	// Switch installs a staged image and reboots the node into it. It never
	// pulls: an image that was not staged is refused (ErrNotStaged).
	Switch(ctx context.Context, image string) error
}

// ErrNotStaged is Switch's answer for an image the node does not hold.
var ErrNotStaged = errorString("image not staged on the node")

type errorString string

func (e errorString) Error() string { return string(e) }
