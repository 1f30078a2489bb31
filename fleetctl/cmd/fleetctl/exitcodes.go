package main

import (
	"errors"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Exit codes: the one place they are decided (documented in README.md).
const (
	ExitOK       = 0 // success; for rollouts: completed
	ExitError    = 1 // anything else went wrong (I/O, node API, database)
	ExitBadInput = 2 // invalid flags, inventory or plan
	ExitHalted   = 3 // the rollout halted itself: a failure budget was spent
	ExitStopped  = 4 // the rollout is paused, aborted or was interrupted
	ExitBusy     = 5 // another live process executes this rollout, or took it over from this one
)

// badInput marks errors caused by what the user gave us.
type badInput struct{ err error }

func (b badInput) Error() string { return b.err.Error() }
func (b badInput) Unwrap() error { return b.err }

func bad(err error) error {
	if err == nil {
		return nil
	}

	return badInput{err}
}

func exitCode(err error) int {
	var (
		bi  badInput
		fe  *inventory.FieldError
		fes inventory.Errors
	)

	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &bi), errors.As(err, &fe), errors.As(err, &fes):
		return ExitBadInput
	case errors.Is(err, engine.ErrHalted):
		return ExitHalted
	case errors.Is(err, engine.ErrPaused), errors.Is(err, engine.ErrAborted), errors.Is(err, engine.ErrInterrupted):
		return ExitStopped
	case errors.Is(err, store.ErrLeaseHeld), errors.Is(err, store.ErrLeaseLost):
		return ExitBusy
	}

	return ExitError
}
