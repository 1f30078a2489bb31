package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/overview"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// The overview API's rollout status is the CLI's `rollout status -o json`:
// same fields, same values (the clock-dependent rate and ETA aside).
func TestOverviewStatusMatchesCLI(t *testing.T) {
	dir := t.TempDir()
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(dir, "fleet.db")}

	out, code := c.run("sim", "init", "--dir", dir, "--clusters", "12", "--nodes-per-cluster", "2", "--fail-rate", "0.3",
		"--wave-failure-percent", "100", "--failure-percent", "100", "--health-timeout", "200ms")
	require.Equal(t, 0, code, out)

	out, code = c.run("rollout", "start", "--inventory", filepath.Join(dir, "inventory.yaml"), "--plan", filepath.Join(dir, "plan.yaml"),
		"--driver", "sim", "--sim-dir", dir)
	require.Contains(t, []int{ExitOK, ExitHalted}, code, out)

	cliJSON, code := c.stdout("rollout", "status", "-o", "json")
	require.Equal(t, 0, code, cliJSON)

	st, err := store.OpenReadOnly(c.db)
	require.NoError(t, err)
	defer st.Close()

	got, err := overview.RolloutStatus(t.Context(), st, "", time.Now())
	require.NoError(t, err)

	apiJSON, err := json.Marshal(got)
	require.NoError(t, err)

	var a, b map[string]any
	require.NoError(t, json.Unmarshal([]byte(cliJSON), &a))
	require.NoError(t, json.Unmarshal(apiJSON, &b))
	require.Greater(t, a["failed"], 0.0, "the case has failures")
	require.Equal(t, a, b)
}

// The verb refuses plain HTTP off loopback, naming the fix, and prints the URL otherwise.
func TestOverviewVerb(t *testing.T) {
	dir := t.TempDir()
	c := cli{t: t, bin: buildBinary(t), db: filepath.Join(dir, "fleet.db")}
	cfg := filepath.Join(dir, "overview.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("users:\n  - name: alice\n    role: operator\n    tokenSHA256: "+strings.Repeat("ab", 32)+"\n"), 0o600))

	out, code := c.run("overview", "--config", cfg, "--listen", "0.0.0.0:0")
	require.Equal(t, ExitBadInput, code, out)
	require.Contains(t, out, "--listen 0.0.0.0:0: not a loopback address, so the config needs tls (cert, key)")

	out, code = c.run("overview", "--listen", "127.0.0.1:0")
	require.Equal(t, ExitBadInput, code, out)
	require.Contains(t, out, "--config is required")

	cmd := c.cmd("overview", "--config", cfg, "--listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	defer func() { cmd.Process.Kill(); cmd.Wait() }() //nolint:errcheck

	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)

	url, ok := strings.CutPrefix(strings.TrimSpace(line), "fleet overview: ")
	require.True(t, ok, line)

	resp, err := http.Get(url + "api/v1/fleet")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	resp, err = http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "the page itself loads without credentials (it shows the login)")
}
