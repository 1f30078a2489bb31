package qemutests

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The slot queue serves by priority, then arrival, and never lets a small
// request pass a large one at the head.
func TestSlotQueueOrder(t *testing.T) {
	q := newSlotQueue(2)
	ctx := context.Background()

	require.NoError(t, q.acquire(ctx, 2, prioNormal)) // both slots busy

	var order []string //nolint:prealloc

	done := make(chan string, 4)
	wait := func(name string, n, prio int) {
		go func() {
			require.NoError(t, q.acquire(ctx, n, prio))
			done <- name
		}()
		time.Sleep(50 * time.Millisecond) // arrival order
	}

	wait("normal-1", 1, prioNormal)
	wait("pair-long", 2, prioLong)
	wait("golden", 1, prioGolden)
	wait("normal-2", 1, prioNormal)

	q.release(1) // one slot: golden (head); the long pair must wait for two
	order = append(order, <-done)

	q.release(1) // the pair still needs two: nobody behind it passes
	select {
	case n := <-done:
		t.Fatalf("%s was served while the pair at the head needed two slots", n)
	case <-time.After(100 * time.Millisecond):
	}

	q.release(1) // golden done: two free, the pair goes
	order = append(order, <-done)

	q.release(2) // the pair done: both normals
	require.Equal(t, []string{"golden", "pair-long"}, order)
	require.ElementsMatch(t, []string{"normal-1", "normal-2"}, []string{<-done, <-done})
}

// A waiter whose context ends leaves the queue and lets those behind it in.
func TestSlotQueueCancelledWaiterLeaves(t *testing.T) {
	q := newSlotQueue(2)
	require.NoError(t, q.acquire(context.Background(), 1, prioNormal))

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()

	err := q.acquire(ctx, 2, prioLong)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// the free slot is not held by the departed pair
	got := make(chan struct{})
	go func() {
		_ = q.acquire(context.Background(), 1, prioNormal)
		close(got)
	}()

	select {
	case <-got:
	case <-time.After(time.Second):
		t.Fatal("a single slot was free but the queue did not serve it after the pair left")
	}
}
