package engine

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"

	"github.com/labfleet/labfleet/fleetctl/plan"
)

type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()

	return c.now
}

func (c *stepClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()

	return ctx.Err()
}

// The gate's rule through the backoff library: a call right away, then one
// per interval, and the last one at the timeout (not one interval early).
func TestPollKeepsTheGateRule(t *testing.T) {
	clock := &stepClock{now: time.Unix(0, 0)}
	e := &execution{opts: Options{Clock: clock}, plan: plan.Plan{Health: plan.HealthGate{Interval: plan.Duration(time.Second)}}}
	start := clock.Now()

	var at []time.Duration

	err := e.poll(t.Context(), 10*time.Second, func() error {
		at = append(at, clock.Now().Sub(start))

		return errors.New("not yet")
	})

	assert.EqualError(t, err, "not yet")
	assert.Len(t, at, 11)
	assert.Equal(t, 10*time.Second, at[len(at)-1])

	calls := 0
	err = e.poll(t.Context(), time.Hour, func() error {
		calls++

		return backoff.Permanent(errors.New("fell back"))
	})
	assert.EqualError(t, err, "fell back")
	assert.Equal(t, 1, calls, "a permanent error ends the polling")

	ctx, cancel := context.WithCancel(t.Context())
	err = e.poll(ctx, time.Hour, func() error {
		cancel()

		return errors.New("x")
	})
	assert.ErrorIs(t, err, context.Canceled)
}
