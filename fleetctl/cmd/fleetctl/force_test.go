package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// forceFleet writes a simulated fleet whose rollout takes a few seconds, so
// a second process can be started while the first one still runs.
func forceFleet(t *testing.T, bin string) (dir, db string, fleetctl func(args ...string) *exec.Cmd) {
	t.Helper()

	dir = t.TempDir()
	db = filepath.Join(dir, "fleet.db")

	fleetctl = func(args ...string) *exec.Cmd {
		return exec.Command(bin, append([]string{"--db", db, "--log-level", "warn"}, args...)...)
	}

	out, err := fleetctl("sim", "init", "--dir", dir, "--clusters", "60", "--nodes-per-cluster", "3",
		"--latency", "2ms", "--stage-time", "20ms", "--reboot-time", "20ms",
		"--health-timeout", "2s", "--health-interval", "5ms", "--concurrency", "4").CombinedOutput()
	require.NoError(t, err, string(out))

	return dir, db, fleetctl
}

func startArgs(dir string) []string {
	return []string{"rollout", "start", "--inventory", filepath.Join(dir, "inventory.yaml"),
		"--plan", filepath.Join(dir, "plan.yaml"), "--driver", "sim", "--sim-dir", dir}
}

// assertEachUpgradedOnce counts upgrades per node in the simulator's journal
// (what the nodes saw, not what fleetctl recorded).
func assertEachUpgradedOnce(t *testing.T, dir string) int {
	t.Helper()

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)

	upgrades := map[string]int{}

	for _, ev := range events {
		if ev.Kind == "U" {
			upgrades[ev.Node]++
		}
	}

	twice := 0

	for _, c := range upgrades {
		if c > 1 {
			twice++
		}
	}

	assert.Zero(t, twice, "nodes upgraded more than once (journal)")

	return len(upgrades)
}

// TestForceWhileFirstStillRuns is finding 1 of issue 13: `resume --force`
// while the first process still runs must not create a second executor. The
// first keeps its database lock; the second is refused with exit 5 naming
// the live holder, and no node is upgraded twice.
// waitLeaseHeld waits until the first process holds its rollout's lease
// (a fixed sleep, then waiting for the rollout record, lost that race on a
// loaded machine).
func waitLeaseHeld(t *testing.T, db string) {
	t.Helper()

	// The rollout record is written before its executor takes the lease: a
	// kill in between leaves a free lease and no holder to take over from,
	// which a loaded machine hits. Wait for the lease's audit line.
	deadline := time.Now().Add(time.Minute)

	for {
		if st, err := store.OpenReadOnly(db); err == nil {
			audit, aerr := st.Audit(t.Context(), "", 0)
			st.Close()

			if aerr == nil && slices.ContainsFunc(audit, func(a store.AuditEntry) bool { return a.Action == "rollout.lease" }) {
				return
			}
		}

		if time.Now().After(deadline) {
			t.Fatalf("the first process took no rollout lease within a minute")
		}

		time.Sleep(50 * time.Millisecond)
	}
}

func TestForceWhileFirstStillRuns(t *testing.T) {
	bin := buildBinary(t)
	dir, db, fleetctl := forceFleet(t, bin)

	first := fleetctl(startArgs(dir)...)

	var firstErr bytes.Buffer
	first.Stderr = &firstErr

	require.NoError(t, first.Start())

	waitLeaseHeld(t, db)

	second := fleetctl("rollout", "resume", "--force")
	out, err := second.CombinedOutput()

	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "second executor must be refused: %s", out)
	assert.Equal(t, ExitBusy, ee.ExitCode(), string(out))
	assert.Contains(t, string(out), fmt.Sprintf("pid %d", first.Process.Pid), "the refusal names the live holder")
	assert.Contains(t, string(out), "alive")

	require.NoError(t, first.Wait(), "first process: %s", firstErr.String())

	assert.Equal(t, 180, assertEachUpgradedOnce(t, dir))
}

// TestForceTakesOverDeadHolder: after kill -9 the holder is gone; resume
// (with or without --force) takes over and says from whom and why.
func TestForceTakesOverDeadHolder(t *testing.T) {
	bin := buildBinary(t)
	dir, db, fleetctl := forceFleet(t, bin)

	first := fleetctl(startArgs(dir)...)
	require.NoError(t, first.Start())
	waitLeaseHeld(t, db)
	require.NoError(t, first.Process.Signal(syscall.SIGKILL))
	first.Wait() //nolint:errcheck

	second := fleetctl("rollout", "resume", "--force")
	out, err := second.CombinedOutput()
	require.NoError(t, err, string(out))

	st, err := store.OpenReadOnly(db)
	require.NoError(t, err)

	defer st.Close()

	audit, err := st.Audit(t.Context(), "", 0)
	require.NoError(t, err)

	var took string

	for _, a := range audit {
		if a.Action == "rollout.lease" && strings.Contains(a.Detail, "took over") {
			took = a.Detail
		}
	}

	assert.Contains(t, took, fmt.Sprintf("pid %d", first.Process.Pid))
	assert.Contains(t, took, "gone")
	assert.Equal(t, 180, assertEachUpgradedOnce(t, dir))
}
