package main

import (
	"context"
	"errors"

	"github.com/labfleet/labfleet/fleetctl/hub/registry"
)

// openRegistry opens the database read-only (it never creates one) and
// returns the hub's machine registry, whether -o json was asked and the
// close of the database: the shared start of the machines, events, logs
// and token ls verbs.
func openRegistry() (*registry.Registry, bool, func(), error) {
	asJSON, err := jsonOut()
	if err != nil {
		return nil, false, nil, err
	}

	st, err := openStoreReadOnly()
	if err != nil {
		return nil, false, nil, err
	}

	return registry.New(st.DB()), asJSON, func() { st.Close() }, nil //nolint:errcheck
}

// resolveMachine finds a machine by UUID or tunnel address; one the
// registry does not know is bad input (exit 2), naming what was asked.
func resolveMachine(ctx context.Context, reg *registry.Registry, node string) (registry.Machine, error) {
	m, err := reg.Resolve(ctx, node)
	if errors.Is(err, registry.ErrNotFound) {
		return m, bad(err)
	}

	return m, err
}
