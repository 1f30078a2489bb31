package sim

import (
	"context"
	"maps"
)

// SimImageSize is the size a SIMULATED node reports for an image it holds.
const SimImageSize = 96 << 20

// Staged implements driver.StageChecker.
func (n *localNode) Staged(ctx context.Context, image string) (bool, int64, error) {
	if err := n.wait(ctx); err != nil {
		return false, 0, err
	}

	return n.f.Staged(n.key, image)
}

// Staged reports whether node key holds image (pulled by Stage and not
// dropped since), as ImageService.List would.
func (f *Fleet) Staged(key, image string) (bool, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	switch f.phase(key, f.node(key)) {
	case phaseRebooting, phaseHung:
		return false, 0, ErrUnreachable
	}

	if f.checks == nil {
		f.checks = map[string]int{}
	}

	f.checks[key]++

	if !f.staged[key][image] {
		return false, 0, nil
	}

	return true, SimImageSize, nil
}

// DropStaged forgets the images node key pulled, as a node that rebooted
// (labos) or had its image store cleaned.
func (f *Fleet) DropStaged(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()

	delete(f.staged, key)
}

// StageChecks is how many times each node was asked whether it holds an image.
func (f *Fleet) StageChecks() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()

	return maps.Clone(f.checks)
}
