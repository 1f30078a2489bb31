package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

func (vm *VM) connectQMP(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)

	for {
		mon, err := qmp.NewSocketMonitor("unix", vm.qmpSocket(), 2*time.Second)
		if err == nil {
			if err = mon.Connect(); err == nil {
				vm.qmpMu.Lock()
				vm.mon = mon
				vm.qmpMu.Unlock()

				return nil
			}

			mon.Disconnect() //nolint:errcheck
		}

		select {
		case <-vm.exited:
			return fmt.Errorf("qemu exited before QMP answered: %v", vm.exitErr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}

		if time.Now().After(deadline) {
			return fmt.Errorf("no QMP on %s after 15s: %w", vm.qmpSocket(), err)
		}
	}
}

// QMP runs one QMP command and returns its "return" value. go-qemu's Run
// has no deadline, so it runs in a goroutine bounded by ctx.
func (vm *VM) QMP(ctx context.Context, command string, args any) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}

	raw, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}

	vm.qmpMu.Lock()
	defer vm.qmpMu.Unlock()

	if vm.mon == nil {
		return nil, fmt.Errorf("qmp %s: %s is closed", command, vm.spec.Name)
	}

	type result struct {
		out []byte
		err error
	}

	ch := make(chan result, 1)
	mon := vm.mon

	go func() {
		out, err := mon.Run(raw)
		ch <- result{out, err}
	}()

	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, r.err)
		}

		var resp struct {
			Return json.RawMessage `json:"return"`
		}

		if err := json.Unmarshal(r.out, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: decoding: %w", command, err)
		}

		return resp.Return, nil
	case <-vm.exited:
		return nil, fmt.Errorf("qmp %s: %w", command, ErrExited)
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

// Status is QEMU's run state as QMP query-status reports it.
type Status struct {
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
	Running bool   `json:"running"`
}

// Status asks QEMU for the run state.
func (vm *VM) Status(ctx context.Context) (Status, error) {
	var st Status

	raw, err := vm.QMP(ctx, "query-status", nil)
	if err != nil {
		return st, err
	}

	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("qmp query-status: %w", err)
	}

	return st, nil
}

// Reset presses the reset button (system_reset): firmware starts again
// with the same vars and TPM state, as on a warm reboot. A VM stopped after
// a guest power-off (QEMU -no-shutdown) is resumed as well.
func (vm *VM) Reset(ctx context.Context) error {
	if _, err := vm.QMP(ctx, "system_reset", nil); err != nil {
		return err
	}

	st, err := vm.Status(ctx)
	if err != nil {
		return err
	}

	if !st.Running {
		if _, err := vm.QMP(ctx, "cont", nil); err != nil {
			return err
		}
	}

	return nil
}

// Shutdown asks the guest to power off (ACPI power button) and waits for
// QEMU to exit; a guest that ignores it (labos does not handle ACPI) is
// stopped with QMP quit after grace, then killed.
func (vm *VM) Shutdown(ctx context.Context, grace time.Duration) error {
	select {
	case <-vm.exited:
		return nil
	default:
	}

	if _, err := vm.QMP(ctx, "system_powerdown", nil); err != nil && !errors.Is(err, ErrExited) {
		return err
	}

	t := time.NewTimer(grace)
	defer t.Stop()

	select {
	case <-vm.exited:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}

	if _, err := vm.QMP(context.Background(), "quit", nil); err == nil || errors.Is(err, ErrExited) {
		select {
		case <-vm.exited:
			return nil
		case <-time.After(5 * time.Second):
		}
	}

	return vm.Kill()
}
