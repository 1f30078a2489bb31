package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/engine"
	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/sim"
	"github.com/labfleet/labfleet/fleetctl/store"
	"github.com/labfleet/labfleet/fleetctl/window"
)

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("boom"), ExitError},
		{bad(errors.New("--x")), ExitBadInput},
		{fmt.Errorf("loading: %w", inventory.Errors{{File: "f", Entry: "e", Field: "x", Msg: "m"}}), ExitBadInput},
		{fmt.Errorf("%w: wave 0", engine.ErrHalted), ExitHalted},
		{engine.ErrPaused, ExitStopped},
		{engine.ErrAborted, ExitStopped},
		{fmt.Errorf("%w: signal", engine.ErrInterrupted), ExitStopped},
		{fmt.Errorf("%w (host pid 1)", store.ErrLeaseHeld), ExitBusy},
	} {
		assert.Equal(t, tc.want, exitCode(tc.err), "%v", tc.err)
	}
}

type cli struct {
	t   *testing.T
	bin string
	db  string
}

func (c cli) cmd(args ...string) *exec.Cmd {
	return exec.Command(c.bin, append([]string{"--db", c.db}, args...)...)
}

func (c cli) run(args ...string) (string, int) {
	c.t.Helper()

	var out bytes.Buffer

	cmd := c.cmd(args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run()

	return out.String(), cmd.ProcessState.ExitCode()
}

// stdout runs fleetctl and returns its standard output only.
func (c cli) stdout(args ...string) (string, int) {
	c.t.Helper()

	var out bytes.Buffer

	cmd := c.cmd(args...)
	cmd.Stdout = &out
	_ = cmd.Run()

	return out.String(), cmd.ProcessState.ExitCode()
}

func TestCLIInventoryAndPlan(t *testing.T) {
	dir := t.TempDir()
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(dir, "fleet.db")}

	out, code := c.run("sim", "init", "--dir", dir, "--clusters", "20", "--nodes-per-cluster", "2")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "SIMULATED")

	out, code = c.run("inventory", "validate", filepath.Join(dir, "inventory.yaml"))
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "2 sites, 20 clusters, 40 nodes")

	broken := filepath.Join(dir, "broken.yaml")
	require.NoError(t, os.WriteFile(broken, []byte("sites:\n  - {name: s, region: r, timezone: Nowhere/Land}\n"), 0o644))

	out, code = c.stdout("inventory", "validate", broken, "-o", "json")
	assert.Equal(t, ExitBadInput, code, out)

	var v map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	assert.Equal(t, false, v["valid"])
	assert.Contains(t, v["error"], `broken.yaml: sites[0] "s": timezone`)

	out, code = c.run("rollout", "plan", "--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", filepath.Join(dir, "plan.yaml"))
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "canary")
	assert.Contains(t, out, "nothing was changed")
	// sim init's plan: 2s gate, no soak, default 10m upgrade call.
	assert.Contains(t, out, "a node starts only with 10m2s of its window left (upgrade call 10m0s + gate 2s + soak 0s)")

	_, err := os.Stat(c.db)
	assert.ErrorIs(t, err, os.ErrNotExist, "plan writes no database")

	// with staging: per site, the bytes to move, the time at the site's
	// bandwidth class and whether it fits before the window
	planText, err := os.ReadFile(filepath.Join(dir, "plan.yaml"))
	require.NoError(t, err)

	staged := filepath.Join(dir, "staged.yaml")
	require.NoError(t, os.WriteFile(staged, append(planText, []byte("staging: {enabled: true}\n")...), 0o644))

	out, code = c.run("rollout", "plan", "--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", staged, "--image-size", "150000000")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "staging: 150.0 MB per node pull")
	assert.Contains(t, out, "switch call 30s + gate 2s + soak 0s: the image is staged ahead")
	assert.Regexp(t, `(?m)^s\S+\s+\d+\s+\d+\.\d MB\s+\S+\s+(yes|NO)\s+\S+\s+(yes|NO)`, out)

	out, code = c.stdout("rollout", "plan", "--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", staged, "--image-size", "150000000", "-o", "json")
	require.Equal(t, 0, code, out)

	var pj struct {
		ImageBytes int64              `json:"imageBytes"`
		Staging    []plan.SiteStaging `json:"staging"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &pj))
	assert.Equal(t, int64(150_000_000), pj.ImageBytes)
	require.Len(t, pj.Staging, 2, "one row per site")

	nodes := 0
	for _, s := range pj.Staging {
		nodes += s.Nodes
		assert.Equal(t, int64(s.Nodes)*150_000_000, s.Bytes)
	}

	assert.Equal(t, 40, nodes)

	out, code = c.run("rollout", "start", "--inventory", filepath.Join(dir, "inventory.yaml"))
	assert.Equal(t, ExitBadInput, code, out)

	out, code = c.run("site", "init", "--cluster", "x", "--endpoint", "127.0.0.1", "--dir", filepath.Join(dir, "creds"), "-o", "json")
	require.Equal(t, 0, code, out)
	assert.FileExists(t, filepath.Join(dir, "creds", "talosconfig"))
}

// TestCLIPauseFromAnotherProcess: a start running in one process notices a
// pause issued by another process through the database.
func TestCLIPauseFromAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(dir, "fleet.db")}

	out, code := c.run("sim", "init", "--dir", dir, "--clusters", "60", "--nodes-per-cluster", "2",
		"--latency", "5ms", "--concurrency", "2", "--health-interval", "5ms")
	require.Equal(t, 0, code, out)

	start := c.cmd("rollout", "start", "--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", filepath.Join(dir, "plan.yaml"),
		"--driver", "sim", "--sim-dir", dir)

	stderr, err := start.StderrPipe()
	require.NoError(t, err)

	var stdout bytes.Buffer
	start.Stdout = &stdout
	require.NoError(t, start.Start())

	// Wait until the rollout is executing (a wave has started).
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "wave started") {
			break
		}
	}

	go func() {
		for sc.Scan() {
		}
	}()

	out, code = c.run("rollout", "pause", "--wait")
	require.Equal(t, 0, code, out)

	require.Error(t, start.Wait())
	assert.Equal(t, ExitStopped, start.ProcessState.ExitCode())
	assert.Contains(t, stdout.String(), "paused")
	assert.Contains(t, stdout.String(), "SIMULATED")

	out, code = c.stdout("rollout", "status", "-o", "json")
	require.Equal(t, 0, code, out)

	var st map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	assert.Equal(t, "paused", st["state"])
	assert.Equal(t, true, st["simulated"])
	assert.Positive(t, st["pending"])

	out, code = c.run("rollout", "resume")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "completed")

	out, code = c.run("sim", "inspect", "--dir", dir)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "0 nodes upgraded more than once")

	out, code = c.run("rollout", "history", "--audit", "--limit", "0")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "rollout.pause")
	assert.Contains(t, out, "rollout.state")

	out, code = c.run("rollout", "history")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "completed")
}

// TestCLIAbortWithoutRunningProcess: abort when nobody executes the rollout
// finishes in-flight nodes itself.
func TestCLIAbortWithoutRunningProcess(t *testing.T) {
	dir := t.TempDir()
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(dir, "fleet.db")}

	out, code := c.run("sim", "init", "--dir", dir, "--clusters", "30", "--nodes-per-cluster", "1",
		"--latency", "3ms", "--stage-time", "20ms", "--concurrency", "3", "--health-interval", "5ms")
	require.Equal(t, 0, code, out)

	start := c.cmd("rollout", "start", "--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", filepath.Join(dir, "plan.yaml"),
		"--driver", "sim", "--sim-dir", dir)
	require.NoError(t, start.Start())
	waitForRollout(t, c.db, 30*time.Second) // a loaded machine may take longer than a fixed sleep
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, start.Process.Kill())
	_ = start.Wait()

	out, code = c.stdout("rollout", "abort", "-o", "json")
	require.Equal(t, ExitStopped, code, out)

	var res engine.Result
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	assert.Equal(t, store.StateAborted, res.State)

	for _, w := range res.Waves {
		assert.Zero(t, w.InFlight, "wave %s: in-flight nodes are finished by abort", w.Name)
	}

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)

	seen := map[string]bool{}
	for _, e := range events {
		if e.Kind == "U" {
			assert.False(t, seen[e.Node], "node %s upgraded twice", e.Node)
			seen[e.Node] = true
		}
	}

	out, code = c.run("rollout", "resume")
	assert.Equal(t, ExitStopped, code, "an aborted rollout stays aborted: %s", out)
}

// closedWindowStart finds a daily one-minute window start that is closed now
// (and for the next minutes) in every time zone the simulator uses.
func closedWindowStart(t *testing.T) string {
	t.Helper()

	now := time.Now()

	for m := 0; m < 24*60; m += 7 {
		start := fmt.Sprintf("%02d:%02d", m/60, m%60)
		ok := true

		for _, z := range []string{"Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "Europe/London",
			"America/Los_Angeles", "Asia/Kolkata", "America/Sao_Paulo", "Africa/Johannesburg", "UTC"} {
			s, err := window.NewSchedule(z, []window.Window{{Start: start, Duration: "1m"}})
			require.NoError(t, err)

			if s.NextOpen(now).Sub(now) < 10*time.Minute {
				ok = false
			}
		}

		if ok {
			return start
		}
	}

	t.Fatal("no closed window start found")

	return ""
}

// TestCLINothingOutsideWindows: with every window closed, a running rollout
// touches no node, status says why it waits, and abort ends it.
func TestCLINothingOutsideWindows(t *testing.T) {
	dir := t.TempDir()
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(dir, "fleet.db")}

	out, code := c.run("sim", "init", "--dir", dir, "--clusters", "20", "--nodes-per-cluster", "2",
		"--window-start", closedWindowStart(t), "--window-duration", "1m")
	require.Equal(t, 0, code, out)

	start := c.cmd("rollout", "start", "--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", filepath.Join(dir, "plan.yaml"),
		"--driver", "sim", "--sim-dir", dir)
	require.NoError(t, start.Start())

	var st map[string]any

	require.Eventually(t, func() bool {
		out, code := c.stdout("rollout", "status", "-o", "json")
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			return false
		}

		return st["executor"] != nil
		// A generous bound: CI runs this beside VM tests on 2 cores, and it
		// only limits a hang (readiness, not a speed goal).
	}, 60*time.Second, 50*time.Millisecond)

	out, code = c.stdout("rollout", "status", "-o", "json")
	require.Equal(t, 0, code, out)
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	assert.EqualValues(t, 2, st["waitingForWindow"], "the canary cluster's two nodes wait for their window")
	assert.NotEmpty(t, st["nextWindow"])

	// The next window per waiting site, in the site's zone.
	sites, _ := st["waitingSites"].([]any)
	require.Len(t, sites, 1, "%v", st)
	site, _ := sites[0].(map[string]any)
	assert.Equal(t, "site-0000", site["site"])
	assert.EqualValues(t, 2, site["nodes"])
	assert.NotEmpty(t, site["timezone"])
	assert.NotEmpty(t, site["nextWindow"])

	text, code := c.stdout("rollout", "status")
	require.Equal(t, 0, code, text)
	assert.Regexp(t, `site-0000 \(\S+\): 2 nodes, next window \d{4}-\d\d-\d\dT`, text)

	out, code = c.run("rollout", "abort", "--wait")
	require.Equal(t, 0, code, out)

	_ = start.Wait()
	assert.Equal(t, ExitStopped, start.ProcessState.ExitCode())

	events, err := sim.ReadJournal(dir)
	require.NoError(t, err)
	assert.Empty(t, events, "no node touched outside its window")
}
