// Package nodestate reads what a node says about itself through the Talos
// API only (Version and COSI resources), the same calls that work against a
// Talos v1.14 node: labctl and the lab harness use it instead of any
// labos-only document.
package nodestate

import (
	"context"
	"errors"
	"fmt"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/grpc/codes"
)

// State is a node's state as its Talos API reports it.
type State struct {
	TalosVersion string `json:"talosVersion"` // VersionInfo.Tag
	// ImageVersion is VersionInfo.Sha, where labos reports the image's
	// own version (a stock Talos build reports its git revision there).
	ImageVersion string `json:"imageVersion"`

	SecureBoot    bool `json:"secureBoot"`    // SecurityState
	BootedWithUKI bool `json:"bootedWithUKI"` // SecurityState

	Stage string   `json:"stage"` // MachineStatus: booting, running, rebooting, ...
	Ready bool     `json:"ready"`
	Unmet []string `json:"unmet,omitempty"` // "name: reason" of each unmet condition

	BootEntry string `json:"bootEntry,omitempty"` // BootedEntry

	// STATE volume (VolumeStatus STATE): phase "ready" once unlocked and
	// mounted, encrypted when a LUKS2 provider is set, error if it failed.
	StatePhase     string `json:"statePhase,omitempty"`
	StateEncrypted bool   `json:"stateEncrypted"`
	StateError     string `json:"stateError,omitempty"`
}

// StateVolumeID is the id of the STATE volume's VolumeStatus.
const StateVolumeID = "STATE"

// Read asks the node behind c for its state. Resources a node has not
// published (yet) are left empty; any other error is returned.
func Read(ctx context.Context, c *client.Client) (State, error) {
	var s State

	v, err := c.Version(ctx)
	if err != nil {
		return s, fmt.Errorf("reading version: %w", err)
	}

	if msgs := v.GetMessages(); len(msgs) > 0 {
		s.TalosVersion, s.ImageVersion = msgs[0].GetVersion().GetTag(), msgs[0].GetVersion().GetSha()
	}

	if ss, err := safe.StateGetByID[*runtime.SecurityState](ctx, c.COSI, runtime.SecurityStateID); err == nil {
		s.SecureBoot, s.BootedWithUKI = ss.TypedSpec().SecureBoot, ss.TypedSpec().BootedWithUKI
	} else if !notFound(err) {
		return s, fmt.Errorf("reading %s: %w", runtime.SecurityStateType, err)
	}

	if ms, err := safe.StateGetByID[*runtime.MachineStatus](ctx, c.COSI, runtime.MachineStatusID); err == nil {
		s.Stage, s.Ready = ms.TypedSpec().Stage.String(), ms.TypedSpec().Status.Ready
		for _, u := range ms.TypedSpec().Status.UnmetConditions {
			s.Unmet = append(s.Unmet, u.Name+": "+u.Reason)
		}
	} else if !notFound(err) {
		return s, fmt.Errorf("reading %s: %w", runtime.MachineStatusType, err)
	}

	if be, err := safe.StateGetByID[*runtime.BootedEntry](ctx, c.COSI, runtime.BootedEntryID); err == nil {
		s.BootEntry = be.TypedSpec().BootedEntry
	} else if !notFound(err) {
		return s, fmt.Errorf("reading %s: %w", runtime.BootedEntryType, err)
	}

	if vs, err := safe.StateGetByID[*block.VolumeStatus](ctx, c.COSI, StateVolumeID); err == nil {
		s.StatePhase = vs.TypedSpec().Phase.String()
		s.StateEncrypted = vs.TypedSpec().EncryptionProvider != block.EncryptionProviderNone
		s.StateError = vs.TypedSpec().ErrorMessage
	} else if !notFound(err) {
		return s, fmt.Errorf("reading %s %s: %w", block.VolumeStatusType, StateVolumeID, err)
	}

	return s, nil
}

// Check says why s is not a node that booted and is ready, or nil.
func (s State) Check() error {
	switch {
	case s.Stage != runtime.MachineStageRunning.String():
		return fmt.Errorf("node is in stage %q, not running", s.Stage)
	case !s.Ready:
		return fmt.Errorf("node runs but is not ready: %v", s.Unmet)
	case s.StatePhase != block.VolumePhaseReady.String():
		return errors.New("STATE volume is not ready: " + s.StatePhase + " " + s.StateError)
	}

	return nil
}

func notFound(err error) bool {
	return state.IsNotFoundError(err) || client.StatusCode(err) == codes.NotFound
}
