package api

import (
	"context"
	"errors"
	"fmt"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Runtime is what the node publishes about itself through the Talos API:
// the COSI resources Talos's controllers would produce (served read-only
// by the cosi.resource.State service, as apid proxies machined's) and the
// event stream. The node updates it as it boots; the API reads it.
type Runtime struct {
	Events *Events

	st state.State
}

// served are the resource types labos produces, with the Talos controller
// whose output each stands in for (internal/app/machined/pkg/controllers/...).
var served = []meta.ResourceDefinitionProvider{
	&runtime.Version{},       // runtime/version.go
	&runtime.SecurityState{}, // runtime/security_state.go
	&runtime.MachineStatus{}, // runtime/machine_status.go
	&runtime.BootedEntry{},   // runtime/booted_entry.go
	&runtime.BootID{},        // runtime/boot_id.go
	&block.VolumeStatus{},    // block/volume_status.go
}

// NewRuntime returns a runtime holding the resource definitions of the
// served types (talosctl get resolves a type name through them, as on
// Talos) and no resources yet.
func NewRuntime() (*Runtime, error) {
	st := state.WrapCore(namespaced.NewState(inmem.Build))
	ctx := context.Background()

	defs := append([]meta.ResourceDefinitionProvider{&meta.ResourceDefinition{}, &meta.Namespace{}}, served...)

	for _, p := range defs {
		rd, err := meta.NewResourceDefinition(p.ResourceDefinition())
		if err != nil {
			return nil, fmt.Errorf("defining resource %s: %w", p.ResourceDefinition().Type, err)
		}

		if err := st.Create(ctx, rd); err != nil {
			return nil, fmt.Errorf("defining resource %s: %w", p.ResourceDefinition().Type, err)
		}
	}

	for _, ns := range []resource.Namespace{meta.NamespaceName, runtime.NamespaceName} {
		if err := st.Create(ctx, meta.NewNamespace(ns, meta.NamespaceSpec{})); err != nil {
			return nil, fmt.Errorf("creating namespace %s: %w", ns, err)
		}
	}

	return &Runtime{Events: NewEvents(), st: st}, nil
}

// State is the read-only view the API serves; writes are refused as Talos
// refuses writes to controller outputs.
func (r *Runtime) State() state.CoreState {
	return state.Filter(r.st, func(_ context.Context, access state.Access) error {
		if access.Verb.Readonly() {
			return nil
		}

		return status.Errorf(codes.PermissionDenied, "%s is written by the node only", access.ResourceType)
	})
}

// stateServer serves r's resources as cosi.resource.State.
func (r *Runtime) stateServer() v1alpha1.StateServer {
	return server.NewState(r.State())
}

func modify[T resource.Resource](r *Runtime, res T, fn func(T) error) error {
	if err := safe.StateModify(context.Background(), r.st, res, fn); err != nil {
		return fmt.Errorf("publishing %s: %w", res.Metadata().Type(), err)
	}

	return nil
}

// SetVersion publishes the Talos version the node stands in for, as
// Talos's VersionController does.
func (r *Runtime) SetVersion(tag string) error {
	return modify(r, runtime.NewVersion(), func(v *runtime.Version) error {
		v.TypedSpec().Name = "Talos"
		v.TypedSpec().Version = tag

		return nil
	})
}

// SetSecurityState publishes whether the node booted with Secure Boot
// enforced and from a UKI.
func (r *Runtime) SetSecurityState(secureBoot, bootedWithUKI bool) error {
	return modify(r, runtime.NewSecurityStateSpec(runtime.NamespaceName), func(s *runtime.SecurityState) error {
		s.TypedSpec().SecureBoot = secureBoot
		s.TypedSpec().BootedWithUKI = bootedWithUKI

		return nil
	})
}

// SetBootID publishes the kernel's boot ID, as Talos's BootIDController
// does: it changes with every boot, so a client that saw it before an
// upgrade can tell whether the node has rebooted since.
func (r *Runtime) SetBootID(id string) error {
	return modify(r, runtime.NewBootID(), func(b *runtime.BootID) error {
		b.TypedSpec().BootID = id

		return nil
	})
}

// SetBootedEntry publishes the boot entry the firmware loader started.
func (r *Runtime) SetBootedEntry(entry string) error {
	return modify(r, runtime.NewBootedEntrySpec(), func(b *runtime.BootedEntry) error {
		b.TypedSpec().BootedEntry = entry

		return nil
	})
}

// SetVolume publishes the status of volume id (STATE, EPHEMERAL, ...).
func (r *Runtime) SetVolume(id string, spec block.VolumeStatusSpec) error {
	return modify(r, block.NewVolumeStatus(block.NamespaceName, id), func(v *block.VolumeStatus) error {
		*v.TypedSpec() = spec

		return nil
	})
}

// SetMachineStatus publishes the machine's stage and readiness and, as
// Talos's MachineStatusPublisher does, a MachineStatusEvent for it.
func (r *Runtime) SetMachineStatus(stage runtime.MachineStage, unmet []runtime.UnmetCondition) error {
	err := modify(r, runtime.NewMachineStatus(), func(m *runtime.MachineStatus) error {
		m.TypedSpec().Stage = stage
		m.TypedSpec().Status.Ready = len(unmet) == 0
		m.TypedSpec().Status.UnmetConditions = unmet

		return nil
	})

	ev := &machine.MachineStatusEvent{
		Stage:  machine.MachineStatusEvent_MachineStage(stage),
		Status: &machine.MachineStatusEvent_MachineStatus{Ready: len(unmet) == 0},
	}

	for _, c := range unmet {
		ev.Status.UnmetConditions = append(ev.Status.UnmetConditions,
			&machine.MachineStatusEvent_MachineStatus_UnmetCondition{Name: c.Name, Reason: c.Reason})
	}

	r.Events.Publish("", ev)

	return err
}

// MachineStatus returns the published machine status.
func (r *Runtime) MachineStatus() (runtime.MachineStatusSpec, error) {
	m, err := safe.StateGetByID[*runtime.MachineStatus](context.Background(), r.st, runtime.MachineStatusID)
	if err != nil {
		if state.IsNotFoundError(err) {
			return runtime.MachineStatusSpec{}, errors.New("no machine status published yet")
		}

		return runtime.MachineStatusSpec{}, err
	}

	return *m.TypedSpec(), nil
}
