package qemutests

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/lab/harness"
)

// Every scenario runs in parallel (make test passes a large -parallel), so
// that image builds and other host work overlap with the VMs of other
// scenarios. The VMs themselves share the machine's two slots through
// vmSlots: a queue served by priority, then in arrival order. The golden
// machine goes first (almost every scenario clones it), then the long
// scenarios (longest first keeps the last minutes from running one VM), then
// the rest. A scenario that needs two VMs at once waits at the head of the
// queue until both are free and is not starved by single-VM scenarios
// behind it. Only scenarios that run several VMs at once reserve their slots
// up front (reserveVMs); a machine of any other scenario takes one slot when
// it powers on and gives it back when it powers off, so no scenario holds a
// slot while it waits for another one, and none can deadlock.
var vmSlots = newSlotQueue(harness.MaxConcurrentVMs)

// Priorities in the slot queue.
const (
	prioNormal = 0
	prioLong   = 1 // a scenario of several minutes of VM time
	prioGolden = 2 // the machine every other scenario waits for
)

// slotWait is how long a scenario may wait for its turn: the whole suite's
// VM time on two slots, with room for a loaded machine.
const slotWait = 45 * time.Minute

var (
	reservedMu sync.Mutex
	reserved   = map[string]int{}           // test name -> slots it holds for its machines
	ownSlots   = map[string]int{}           // test name -> machines running on a slot of their own
	waited     = map[string]time.Duration{} // test name -> time spent waiting for slots
	priority   = map[string]int{}           // test name -> its place in the slot queue
)

// vmPriority sets the test's place in the slot queue (default prioNormal).
func vmPriority(t *testing.T, p int) {
	reservedMu.Lock()
	defer reservedMu.Unlock()

	priority[t.Name()] = p
}

func priorityOf(name string) int {
	reservedMu.Lock()
	defer reservedMu.Unlock()

	return priority[name]
}

// slotWaited is how long the test has waited for VM slots so far.
func slotWaited(name string) time.Duration {
	reservedMu.Lock()
	defer reservedMu.Unlock()

	return waited[name]
}

// reserveVMs waits for n VM slots and holds them until the test (and its
// subtests) end. The machines of this test then boot on these slots. A
// scenario that runs several machines at once is a long one: it queues at
// prioLong unless it set its priority.
func reserveVMs(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	require.LessOrEqual(t, n, harness.MaxConcurrentVMs, "a scenario can hold at most %d VMs", harness.MaxConcurrentVMs)
	require.Zero(t, reservation(t.Name()), "%s already holds VM slots: reserve once, before the first boot", t.Name())

	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), slotWait)
	defer cancel()

	start := time.Now()
	require.NoError(t, vmSlots.acquire(wctx, n, max(priorityOf(t.Name()), prioLong)), "waiting for %d VM slots", n)
	t.Logf("holding %d VM slots (waited %.0fs)", n, time.Since(start).Seconds())

	reservedMu.Lock()
	reserved[t.Name()] = n
	waited[t.Name()] += time.Since(start)
	reservedMu.Unlock()

	t.Cleanup(func() {
		reservedMu.Lock()
		delete(reserved, t.Name())
		reservedMu.Unlock()
		vmSlots.release(n)
	})
}

// reservation is how many slots the test or one of its parents holds.
func reservation(name string) int {
	reservedMu.Lock()
	defer reservedMu.Unlock()

	for held, n := range reserved {
		if name == held || strings.HasPrefix(name, held+"/") {
			return n
		}
	}

	return 0
}

// bootSlot is the slot a machine powers on with: none of its own when its
// test reserved slots, otherwise one taken now. The returned func gives it back.
func bootSlot(ctx context.Context, t *testing.T) (release func()) {
	t.Helper()

	if reservation(t.Name()) > 0 {
		return func() {}
	}

	// holding one slot while waiting for a second is how two such tests
	// would deadlock: a test that runs two machines at once reserves them
	reservedMu.Lock()
	running := ownSlots[t.Name()]
	reservedMu.Unlock()
	require.Zero(t, running, "%s already runs a machine: a test that runs several at once must reserveVMs first", t.Name())

	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), slotWait)
	defer cancel()

	start := time.Now()
	require.NoError(t, vmSlots.acquire(wctx, 1, priorityOf(t.Name())), "waiting for a VM slot")

	reservedMu.Lock()
	ownSlots[t.Name()]++
	waited[t.Name()] += time.Since(start)
	reservedMu.Unlock()

	var once sync.Once

	return func() {
		once.Do(func() {
			reservedMu.Lock()
			ownSlots[t.Name()]--
			reservedMu.Unlock()
			vmSlots.release(1)
		})
	}
}

// slotQueue is a counting semaphore whose waiters are served by priority,
// then in arrival order; the head is served before anyone behind it, even
// if a smaller request behind it would fit.
type slotQueue struct {
	mu      sync.Mutex
	free    int
	waiters []*slotWaiter
}

type slotWaiter struct {
	n, prio int
	ready   chan struct{}
}

func newSlotQueue(n int) *slotQueue { return &slotQueue{free: n} }

func (q *slotQueue) acquire(ctx context.Context, n, prio int) error {
	q.mu.Lock()

	if len(q.waiters) == 0 && q.free >= n {
		q.free -= n
		q.mu.Unlock()

		return nil
	}

	w := &slotWaiter{n: n, prio: prio, ready: make(chan struct{})}

	i := len(q.waiters)
	for i > 0 && q.waiters[i-1].prio < prio {
		i--
	}

	q.waiters = append(q.waiters[:i], append([]*slotWaiter{w}, q.waiters[i:]...)...)
	q.grant() // a waiter that jumped ahead may fit now
	q.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		q.mu.Lock()
		defer q.mu.Unlock()

		select {
		case <-w.ready: // served meanwhile: give the slots back
			q.free += n
		default:
			for j, o := range q.waiters {
				if o == w {
					q.waiters = append(q.waiters[:j], q.waiters[j+1:]...)

					break
				}
			}
		}

		q.grant()

		return ctx.Err()
	}
}

func (q *slotQueue) release(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()

	q.free += n
	q.grant()
}

// grant serves waiters from the head while they fit; q.mu is held.
func (q *slotQueue) grant() {
	for len(q.waiters) > 0 && q.free >= q.waiters[0].n {
		w := q.waiters[0]
		q.waiters = q.waiters[1:]
		q.free -= w.n
		close(w.ready)
	}
}
