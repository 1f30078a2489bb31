package driver

import "context"

// StageChecker is implemented by nodes that can say whether they hold an
// image, as Talos 1.13+ lists its image store (ImageService.List,
// `talosctl image list`). A resumed rollout asks it for nodes its store
// records as staged instead of trusting the record: the node may have
// rebooted since (labos keeps pulled images until the next boot) or had
// its image store cleaned.
type StageChecker interface {
	// Staged reports whether the node holds image and, if it says, its
	// size in bytes (0: not reported).
	Staged(ctx context.Context, image string) (held bool, size int64, err error)
}
