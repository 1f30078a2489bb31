package qemutests

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/semaphore"

	"github.com/labfleet/labfleet/lab/harness"
)

// Every scenario runs in parallel (make test passes a large -parallel), so
// that image builds and other host work overlap with the VMs of other
// scenarios. The VMs themselves share the machine's two slots through
// vmSlots. It is FIFO: a scenario that needs two VMs at once is served in
// its turn and is not starved by the single-VM scenarios behind it. Only
// scenarios that run several VMs at once reserve their slots up front
// (reserveVMs); a machine of any other scenario takes one slot when it
// powers on and gives it back when it powers off, so no scenario ever holds
// a slot while it waits for another one, and none can deadlock.
var vmSlots = semaphore.NewWeighted(harness.MaxConcurrentVMs)

// slotWait is how long a scenario may wait for its turn: the whole suite's
// VM time on two slots, with room for a loaded machine.
const slotWait = 45 * time.Minute

var (
	reservedMu sync.Mutex
	reserved   = map[string]int{}           // test name -> slots it holds for its machines
	ownSlots   = map[string]int{}           // test name -> machines running on a slot of their own
	waited     = map[string]time.Duration{} // test name -> time spent waiting for slots
)

// slotWaited is how long the test has waited for VM slots so far.
func slotWaited(name string) time.Duration {
	reservedMu.Lock()
	defer reservedMu.Unlock()

	return waited[name]
}

// reserveVMs waits for n VM slots and holds them until the test (and its
// subtests) end. The machines of this test then boot on these slots.
func reserveVMs(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	require.LessOrEqual(t, n, harness.MaxConcurrentVMs, "a scenario can hold at most %d VMs", harness.MaxConcurrentVMs)
	require.Zero(t, reservation(t.Name()), "%s already holds VM slots: reserve once, before the first boot", t.Name())

	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), slotWait)
	defer cancel()

	start := time.Now()
	require.NoError(t, vmSlots.Acquire(wctx, int64(n)), "waiting for %d VM slots", n)
	t.Logf("holding %d VM slots (waited %.0fs)", n, time.Since(start).Seconds())

	reservedMu.Lock()
	reserved[t.Name()] = n
	waited[t.Name()] += time.Since(start)
	reservedMu.Unlock()

	t.Cleanup(func() {
		reservedMu.Lock()
		delete(reserved, t.Name())
		reservedMu.Unlock()
		vmSlots.Release(int64(n))
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
	require.NoError(t, vmSlots.Acquire(wctx, 1), "waiting for a VM slot")

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
			vmSlots.Release(1)
		})
	}
}
