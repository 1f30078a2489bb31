// Package node is labos's PID 1 logic: the boot sequence Talos's
// machined would run (phases, STATE unlock, API), the health verdict and
// systemd-bless-boot's part, and the actions the machine API asks for.
package node

import (
	"fmt"

	"github.com/labfleet/labfleet/lab/labos/bootentry"
)

// Outcome is what Settle did with the booted entry.
type Outcome struct {
	Entry     string // booted entry id (counter removed)
	Blessed   bool   // entry carries no counter any more
	Pinned    string // loader.conf default written ("" if untouched)
	MarkedBad string // file name the entry was renamed to when marked bad
	Reboot    bool   // reboot now so systemd-boot falls back
}

// Settle blesses or rejects the booted entry as systemd-bless-boot does.
// countPath is LoaderBootCountPath (empty when the entry has no counter);
// selected is LoaderEntrySelected.
//
//   - healthy and counted: rename NAME+N-M.efi to NAME.efi, then pin
//     loader.conf's default to it (safe only now that it is blessed);
//   - unhealthy and counted: rename to NAME+0-M.efi and, when another good
//     entry exists, ask for a reboot so systemd-boot falls back to it;
//   - not counted (already blessed): nothing to do either way; an
//     unhealthy blessed entry is reported, not rebooted in a loop.
func Settle(esp bootentry.ESP, countPath, selected string, healthy bool) (Outcome, error) {
	return SettleWith(esp, countPath, selected, healthy, nil)
}

// SettleWith is Settle that calls checkpoint(bootentry.CheckpointRenamed)
// between blessing the entry and pinning it (power-cut tests).
func SettleWith(esp bootentry.ESP, countPath, selected string, healthy bool, checkpoint func(string)) (Outcome, error) {
	if countPath == "" {
		id := selected
		if e, err := bootentry.Parse(selected); err == nil {
			id = e.ID()
		}

		return Outcome{Entry: id, Blessed: true}, nil
	}

	e, err := bootentry.Parse(baseName(countPath))
	if err != nil {
		return Outcome{}, fmt.Errorf("settling boot entry: %w", err)
	}

	if !healthy {
		bad, err := esp.MarkBad(e.File)
		if err != nil {
			return Outcome{Entry: e.ID()}, fmt.Errorf("settling boot entry: %w", err)
		}

		// Reboot only when systemd-boot has something better to boot:
		// with no other good entry it would boot this one again (bad
		// entries are still booted as a last resort) and loop forever.
		fallback, err := hasFallback(esp, e.Base)
		if err != nil {
			return Outcome{Entry: e.ID(), MarkedBad: bad.File}, fmt.Errorf("settling boot entry: %w", err)
		}

		return Outcome{Entry: e.ID(), MarkedBad: bad.File, Reboot: fallback}, nil
	}

	blessed, err := esp.Bless(e.File)
	if err != nil {
		return Outcome{Entry: e.ID()}, fmt.Errorf("settling boot entry: %w", err)
	}

	if checkpoint != nil {
		checkpoint(bootentry.CheckpointRenamed)
	}

	if err := esp.SetDefault(blessed.ID()); err != nil {
		return Outcome{Entry: blessed.ID(), Blessed: true}, fmt.Errorf("settling boot entry: %w", err)
	}

	return Outcome{Entry: blessed.ID(), Blessed: true, Pinned: blessed.ID()}, nil
}

func hasFallback(esp bootentry.ESP, base string) (bool, error) {
	es, err := esp.List()
	if err != nil {
		return false, err
	}

	for _, o := range es {
		if o.Base != base && !o.Bad() {
			return true, nil
		}
	}

	return false, nil
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' || p[i] == '\\' {
			return p[i+1:]
		}
	}

	return p
}
