package sim_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sim"
)

const killChildEnv = "SIM_JOURNAL_KILL_CHILD"

// The journal is the simulated nodes' memory: every event a call
// acknowledged (returned from) must be replayed after the process running
// the fleet is killed with SIGKILL, without Close. The child records
// events from several goroutines (more than the journal's first
// preallocated chunk, so it grows), prints each after its call returned,
// and kills itself right after the last one.
func TestJournalSurvivesKill(t *testing.T) {
	if dir := os.Getenv(killChildEnv); dir != "" {
		journalKillChild(dir)

		return
	}

	dir := t.TempDir()
	b := sim.Behaviour{InitialVersion: "v1"}

	cmd := exec.Command(os.Args[0], "-test.run=^TestJournalSurvivesKill$", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildEnv+"="+dir)

	var out bytes.Buffer
	cmd.Stdout = &out

	err := cmd.Run()

	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the child must die by its own SIGKILL (output: %s)", out.String())
	ws, ok := exit.Sys().(syscall.WaitStatus)
	require.True(t, ok)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child ended by %v, not SIGKILL", exit)

	acked := map[string]string{} // node -> last acknowledged event kind
	sc := bufio.NewScanner(&out)

	for sc.Scan() {
		kind, node, ok := strings.Cut(sc.Text(), " ")
		require.True(t, ok, "child output %q", sc.Text())
		acked[node] += kind
	}

	require.Greater(t, len(acked), 30000, "the child acknowledged too few events to grow the journal")

	fi, err := os.Stat(filepath.Join(dir, "journal.log"))
	require.NoError(t, err)

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)

	got := map[string]string{}
	for _, ev := range events {
		got[ev.Node] += ev.Kind
	}

	for node, kinds := range acked {
		require.Equal(t, kinds, got[node], "node %s: acknowledged events missing from the journal", node)
	}

	f, err := sim.Open(dir, b)
	require.NoError(t, err)

	counts := f.Counts()
	for node, kinds := range acked {
		want := sim.Counts{Upgrades: strings.Count(kinds, "U"), Rollbacks: strings.Count(kinds, "R")}
		require.Equal(t, want, counts[node], "node %s after replay", node)
	}

	// Recording goes on where the killed process stopped; Close cuts the
	// file to its events (the killed process left it preallocated).
	require.NoError(t, f.Upgrade("after/kill", "v2"))
	require.NoError(t, f.Close())

	data, err := os.ReadFile(filepath.Join(dir, "journal.log"))
	require.NoError(t, err)
	assert.Less(t, int64(len(data)), fi.Size()+4096)
	assert.NotContains(t, string(data), "\x00", "no NUL bytes left after Close")
	assert.True(t, strings.HasSuffix(string(data), "\n"))

	events2, err := sim.ReadJournal(dir)
	require.NoError(t, err)
	require.Len(t, events2, len(events)+1)
	assert.Equal(t, "after/kill", events2[len(events)].Node)
}

func journalKillChild(dir string) {
	f, err := sim.Open(dir, sim.Behaviour{InitialVersion: "v1"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	var (
		mu sync.Mutex
		w  = bufio.NewWriter(os.Stdout)
		wg sync.WaitGroup
	)

	ack := func(kind, node string) {
		mu.Lock()
		fmt.Fprintf(w, "%s %s\n", kind, node)
		mu.Unlock()
	}

	for g := range 8 {
		wg.Go(func() {
			for i := range 4000 {
				node := fmt.Sprintf("c%05d/n%d", i, g)
				if err := f.Upgrade(node, "v2"); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}

				ack("U", node)

				if i%7 == 0 {
					if err := f.Rollback(node); err != nil {
						fmt.Fprintln(os.Stderr, err)
						os.Exit(2)
					}

					ack("R", node)
				}
			}
		})
	}

	wg.Wait()

	// Everything acknowledged is printed; then die without Close.
	mu.Lock()
	w.Flush()                                  //nolint:errcheck
	syscall.Kill(os.Getpid(), syscall.SIGKILL) //nolint:errcheck
	select {}
}

// A line torn by a crash (never acknowledged) is not replayed and does not
// swallow the next event; the NUL tail a killed process leaves is ignored.
func TestJournalTornTailIgnored(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.log")
	torn := "U\tc/a\tv2\t1700000000000000000\nU\tc/b\tv2\t17000"
	require.NoError(t, os.WriteFile(path, append([]byte(torn), make([]byte, 5000)...), 0o644))

	f, err := sim.Open(dir, sim.Behaviour{InitialVersion: "v1"})
	require.NoError(t, err)
	assert.Equal(t, sim.Counts{Upgrades: 1}, f.Counts()["c/a"])
	assert.Zero(t, f.Counts()["c/b"], "the torn event was never acknowledged")

	require.NoError(t, f.Upgrade("c/c", "v2"))

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)
	require.Len(t, events, 2, "read while the fleet is open (preallocated file)")
	assert.Equal(t, "c/c", events[1].Node)
	assert.Equal(t, "v2", events[1].Version)

	require.NoError(t, f.Close())

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, 2, strings.Count(string(data), "\n"))
	assert.NotContains(t, string(data), "\x00")
	assert.NotContains(t, string(data), "c/b")
}

// A fleet opened while another handle (another process, in production)
// records refuses to record, naming why, until that one is closed; then
// it takes up the journal with the events the other recorded meanwhile.
func TestJournalOneWriterAtATime(t *testing.T) {
	dir := t.TempDir()
	b := sim.Behaviour{InitialVersion: "v1"}

	f, err := sim.Open(dir, b)
	require.NoError(t, err)
	require.NoError(t, f.Upgrade("c/a", "v2"))

	g, err := sim.Open(dir, b)
	require.NoError(t, err)

	t.Cleanup(func() { g.Close() })

	assert.Equal(t, sim.Counts{Upgrades: 1}, g.Counts()["c/a"], "a second handle reads the journal")

	require.NoError(t, f.Upgrade("c/b", "v2"))

	err = g.Upgrade("c/x", "v2")
	require.ErrorContains(t, err, "writing simulator journal: the simulator journal is in use by another process")
	assert.Zero(t, g.Counts()["c/x"], "a refused event does not take effect")

	require.NoError(t, f.Close())

	require.NoError(t, g.Upgrade("c/c", "v2"))
	assert.Equal(t, sim.Counts{Upgrades: 1}, g.Counts()["c/b"], "events recorded before the takeover are applied")

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)

	var nodes []string
	for _, ev := range events {
		nodes = append(nodes, ev.Node)
	}

	assert.Equal(t, []string{"c/a", "c/b", "c/c"}, nodes)
}

// Close while calls still record: the mapping goes away only between
// events, and a call after Close fails instead of writing to it.
func TestJournalCloseDuringCalls(t *testing.T) {
	dir := t.TempDir()

	f, err := sim.Open(dir, sim.Behaviour{InitialVersion: "v1"})
	require.NoError(t, err)

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		oks  int
		errs []error
	)

	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				err := f.Upgrade(fmt.Sprintf("c%d/n%d", i, g), "v2")

				mu.Lock()
				if err == nil {
					oks++
				} else {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}

	// Close in the middle of the calls.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()

		return oks >= 1000
	}, 10*time.Second, 100*time.Microsecond)
	require.NoError(t, f.Close())
	wg.Wait()

	require.NotEmpty(t, errs, "Close came after the last call; the test proves nothing")

	for _, err := range errs {
		require.ErrorContains(t, err, "writing simulator journal")
	}

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)
	assert.Len(t, events, oks, "every acknowledged event is in the journal, nothing else")
}
