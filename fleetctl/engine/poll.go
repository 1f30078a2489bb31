package engine

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// poll calls op right away and then every interval until it returns nil,
// returns a backoff.Permanent error, ctx ends, or a call failed at or after
// timeout from now. It returns nil, the permanent error, ctx's error or
// op's last error. Time is the engine's Clock, so tests run gates and
// windows on simulated time.
func (e *execution) poll(ctx context.Context, timeout time.Duration, op func() error) error {
	interval := e.plan.Health.Interval.D()

	// A constant period (multiplier 1, no jitter). The library stops once
	// elapsed+next would exceed MaxElapsedTime; timeout+interval-1ns makes
	// that "a call failed at or after timeout", the gate's documented rule.
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(interval),
		backoff.WithMaxInterval(interval),
		backoff.WithMultiplier(1),
		backoff.WithRandomizationFactor(0),
		backoff.WithMaxElapsedTime(timeout+interval-time.Nanosecond),
		backoff.WithClockProvider(e.opts.Clock),
	)

	var timer backoff.Timer // nil: the library's own timer, on the wall clock
	if _, real := e.opts.Clock.(realClock); !real {
		timer = &clockTimer{clock: e.opts.Clock, ctx: ctx}
	}

	return backoff.RetryNotifyWithTimer(op, backoff.WithContext(b, ctx), nil, timer)
}

// clockTimer is a backoff.Timer on an engine Clock.
type clockTimer struct {
	clock  Clock
	ctx    context.Context //nolint:containedctx // the poll's context, for the sleeping goroutine
	c      chan time.Time
	cancel context.CancelFunc
}

func (t *clockTimer) Start(d time.Duration) {
	t.Stop()

	ctx, cancel := context.WithCancel(t.ctx)
	c := make(chan time.Time, 1)
	t.c, t.cancel = c, cancel

	go func() {
		if t.clock.Sleep(ctx, d) == nil {
			c <- t.clock.Now()
		}
	}()
}

func (t *clockTimer) Stop() {
	if t.cancel != nil {
		t.cancel()
	}
}

func (t *clockTimer) C() <-chan time.Time { return t.c }
