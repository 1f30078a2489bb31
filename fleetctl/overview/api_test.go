package overview

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/store"
)

// Every endpoint refuses a request without credentials with 401 and says how to log in.
func TestEveryEndpointNeedsCredentials(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	for _, c := range []struct{ method, path string }{
		{"GET", "/api/v1/me"}, {"GET", "/api/v1/fleet"}, {"GET", "/api/v1/clusters"},
		{"GET", "/api/v1/nodes/c00000/n0"}, {"GET", "/api/v1/rollouts"}, {"GET", "/api/v1/rollouts/latest"},
		{"GET", "/api/v1/rollouts/latest/events"}, {"POST", "/api/v1/rollouts/latest/pause"},
		{"POST", "/api/v1/rollouts/latest/resume"}, {"POST", "/api/v1/rollouts/latest/abort"},
	} {
		for _, tok := range []string{"", "wrong-token"} {
			resp, b := f.do(t, c.method, c.path, tok, nil)
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s token %q", c.method, c.path, tok)
			require.Contains(t, errorText(t, b), "authentication required", "%s %s", c.method, c.path)
		}
	}

	r, err := f.st.Rollout(t.Context(), f.id)
	require.NoError(t, err)
	require.Equal(t, store.DesiredRun, r.Desired, "refused requests changed nothing")
	require.Equal(t, store.StateRunning, r.State)
}

// The read-only role sees everything but cannot pause, resume or abort; the
// refusal names the user's role and the role required; nothing is written.
func TestReadOnlyCannotAct(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	before, err := f.st.Audit(t.Context(), f.id, 0)
	require.NoError(t, err)

	for _, action := range []string{"pause", "resume", "abort"} {
		resp, b := f.do(t, "POST", "/api/v1/rollouts/latest/"+action, roToken, nil)
		require.Equal(t, http.StatusForbidden, resp.StatusCode, action)
		require.Equal(t, "bob has role read-only, which may not "+action+" rollouts: the operator role is required", errorText(t, b))
	}

	r, err := f.st.Rollout(t.Context(), f.id)
	require.NoError(t, err)
	require.Equal(t, store.DesiredRun, r.Desired)
	require.Equal(t, store.StateRunning, r.State)

	after, err := f.st.Audit(t.Context(), f.id, 0)
	require.NoError(t, err)
	require.Len(t, after, len(before), "a refused action writes nothing")

	var fl Fleet
	f.getJSON(t, "/api/v1/fleet", roToken, &fl)
	require.Equal(t, 8, fl.Total.Nodes)
}

// An operator's pause goes through the store like `fleetctl rollout pause`
// and the audit line names who did it.
func TestOperatorPauseIsAuditedWithWho(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	resp, b := f.do(t, "POST", "/api/v1/rollouts/"+f.id+"/pause", opToken, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))

	var res ActionResult
	require.NoError(t, json.Unmarshal(b, &res))
	require.Equal(t, "paused", res.Outcome, "no executor runs it: paused like the CLI does")
	require.Equal(t, store.StatePaused, res.State)

	audit, err := f.st.Audit(t.Context(), f.id, 0)
	require.NoError(t, err)

	var lines []string
	for _, e := range audit {
		if e.Action == "rollout.pause" || (e.Action == "rollout.state" && e.Subject == store.StatePaused) {
			lines = append(lines, e.Action+" by "+e.Actor)
		}
	}

	require.Equal(t, []string{"rollout.pause by alice (overview, token, operator)", "rollout.state by alice (overview, token, operator)"}, lines)

	// A second pause of a paused rollout is allowed (like the CLI); a completed one is refused naming its state.
	require.NoError(t, f.st.SetState(t.Context(), f.id, store.StateCompleted, "", "t"))
	resp, b = f.do(t, "POST", "/api/v1/rollouts/latest/abort", opToken, nil)
	require.Equal(t, http.StatusConflict, resp.StatusCode)
	require.Equal(t, "rollout "+f.id+" is completed: nothing to abort", errorText(t, b))
}

// Resume needs an executor; without one the refusal says which command to run.
func TestResumeUsesTheExecutor(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)
	require.NoError(t, f.st.SetState(t.Context(), f.id, store.StatePaused, "", "t"))

	resp, b := f.do(t, "POST", "/api/v1/rollouts/latest/resume", opToken, nil)
	require.Equal(t, http.StatusNotImplemented, resp.StatusCode)
	require.Equal(t, "this server does not execute rollouts: run fleetctl rollout resume "+f.id+" --db <db>", errorText(t, b))

	var (
		mu  sync.Mutex
		got []string
	)

	g := newFixture(t, smallFleet(false), func(o *Options) {
		o.Executor = func(_ context.Context, id, actor string) error {
			mu.Lock()
			got = append(got, id+" "+actor)
			mu.Unlock()

			return nil
		}
	})
	require.NoError(t, g.st.SetState(t.Context(), g.id, store.StatePaused, "", "t"))

	resp, b = g.do(t, "POST", "/api/v1/rollouts/latest/resume", opToken, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	require.Equal(t, []string{g.id + " alice (overview, token, operator)"}, got)

	resp, b = g.do(t, "POST", "/api/v1/rollouts/latest/restart", opToken, nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, `unknown action "restart": want pause, resume or abort`, errorText(t, b))
}

// A token login sets an HttpOnly, SameSite=Strict session cookie; the token
// is never echoed; logout ends the session.
func TestLoginSessionCookie(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	resp, b := f.do(t, "POST", "/api/v1/login", "", strings.NewReader(`{"token":"nope"}`))
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, "login: unknown token", errorText(t, b))

	resp, b = f.do(t, "POST", "/api/v1/login", "", strings.NewReader(`{"token":"`+roToken+`"}`))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NotContains(t, string(b), roToken)
	require.JSONEq(t, `{"name":"bob","role":"read-only","method":"token"}`, string(b))

	var c *http.Cookie
	for _, k := range resp.Cookies() {
		if k.Name == sessionCookie {
			c = k
		}
	}

	require.NotNil(t, c)
	require.True(t, c.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, c.SameSite)
	require.NotContains(t, c.Value, roToken)

	get := func() int {
		req, _ := http.NewRequest("GET", f.ts.URL+"/api/v1/me", nil)
		req.AddCookie(c)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()

		return resp.StatusCode
	}

	require.Equal(t, http.StatusOK, get())

	req, _ := http.NewRequest("POST", f.ts.URL+"/api/v1/logout", nil)
	req.AddCookie(c)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, get(), "logged out")
}

// A cross-origin POST with a valid session is refused (CSRF), naming the origin.
func TestCrossOriginActionRefused(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	req, _ := http.NewRequest("POST", f.ts.URL+"/api/v1/rollouts/latest/pause", nil)
	req.Header.Set("Authorization", "Bearer "+opToken)
	req.Header.Set("Origin", "https://evil.example")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)

	r, err := f.st.Rollout(t.Context(), f.id)
	require.NoError(t, err)
	require.Equal(t, store.DesiredRun, r.Desired)
}

// Fleet roll-ups per region and site, filters and search.
func TestFleetRollupsAndFilters(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, smallFleet(true), func(o *Options) { o.Now = func() time.Time { return now } })

	// canary cluster c00000: n0 done, n1 failed and rolled back; c00001/n0 in flight.
	f.record(t, 0, "c00000/n0", store.Transition{State: store.NodeRequested, FromVersion: "v1.0.0", UpgradeCall: true})
	f.record(t, 0, "c00000/n0", store.Transition{State: store.NodeDone, Detail: "healthy at v2.0.0"})
	f.record(t, 1, "c00000/n1", store.Transition{State: store.NodeRequested, FromVersion: "v1.0.0", UpgradeCall: true})
	f.record(t, 1, "c00000/n1", store.Transition{State: store.NodeFailed, Error: "health gate: service addons unhealthy", RolledBack: true})
	f.record(t, 2, "c00001/n0", store.Transition{State: store.NodeAccepted, FromVersion: "v1.0.0", UpgradeCall: true})

	var fl Fleet
	f.getJSON(t, "/api/v1/fleet", roToken, &fl)
	require.Equal(t, 4, fl.Total.Clusters)
	require.Equal(t, 8, fl.Total.Nodes)
	require.Equal(t, map[string]int{"healthy": 1, "failed": 1, "upgrading": 1, "unknown": 5}, fl.Total.Health)
	require.Equal(t, []string{"unknown", "v1.0.0", "v2.0.0"}, fl.Versions)
	require.Len(t, fl.Regions, 2)
	require.Equal(t, "region-00", fl.Regions[0].Name)
	require.Equal(t, 4, fl.Regions[0].Nodes)

	s := fl.Regions[0].Sites[0]
	require.Equal(t, "site-0000", s.Name)
	require.Equal(t, "Europe/Berlin", s.TimeZone)
	require.Equal(t, "2026-11-30 13:00 CET", s.LocalTime)
	require.False(t, s.WindowOpen)
	require.Equal(t, time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC), s.NextOpen.UTC(), "02:00 Berlin = 01:00 UTC")

	for q, want := range map[string]int{
		"health=failed": 1, "health=upgrading": 1, "version=v2.0.0": 1, "version=unknown": 5,
		"region=region-01": 4, "site=site-0001": 4, "q=c00001": 2, "q=C00000/N1": 1, "window=open": 0, "window=closed": 8,
		"secureBoot=unknown": 8, "secureBoot=on": 0, "encryption=off": 0, "health=failed&region=region-01": 0,
	} {
		var got Fleet
		f.getJSON(t, "/api/v1/fleet?"+q, roToken, &got)
		require.Equal(t, want, got.Total.Nodes, q)
	}

	var cl Clusters
	f.getJSON(t, "/api/v1/clusters?site=site-0000&health=failed", roToken, &cl)
	require.Equal(t, 1, cl.Total)
	require.Equal(t, "c00000", cl.Clusters[0].Name)
	require.Equal(t, "failed", cl.Clusters[0].Health, "worst node")
	require.Len(t, cl.Clusters[0].Nodes, 1)
	require.Equal(t, "n1", cl.Clusters[0].Nodes[0].Name)
	require.Equal(t, "v1.0.0", cl.Clusters[0].Nodes[0].Version, "rolled back: runs its previous version")

	f.getJSON(t, "/api/v1/clusters?limit=3&offset=2", roToken, &cl)
	require.Equal(t, 4, cl.Total)
	require.Len(t, cl.Clusters, 2)
	require.Equal(t, "c00002", cl.Clusters[0].Name)

	resp, b := f.do(t, "GET", "/api/v1/clusters?limit=5000", roToken, nil)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Equal(t, `query parameter limit="5000": want a number from 0 to 1000`, errorText(t, b))
}

type fakeFacts map[string]Facts

func (f fakeFacts) Facts(cluster, node string) (Facts, bool) {
	v, ok := f[cluster+"/"+node]

	return v, ok
}

// Facts from the nodes (the hub) drive version, Secure Boot and encryption filters.
func TestFactsFilters(t *testing.T) {
	ff := fakeFacts{
		"c00000/n0": {Version: "v1.0.0", SecureBoot: "on", Encryption: "on"},
		"c00000/n1": {Version: "v1.0.0", SecureBoot: "off", Encryption: "on"},
	}
	f := newFixture(t, smallFleet(false), func(o *Options) { o.Facts = ff })

	for q, want := range map[string]int{"secureBoot=on": 1, "secureBoot=off": 1, "encryption=on": 2, "secureBoot=unknown": 6, "version=v1.0.0": 2, "window=open": 8} {
		var got Fleet
		f.getJSON(t, "/api/v1/fleet?"+q, roToken, &got)
		require.Equal(t, want, got.Total.Nodes, q)
	}
}

// The node page's history: upgrades, rollbacks and fallbacks with reasons and the audit steps.
func TestNodeHistory(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)
	f.record(t, 1, "c00000/n1", store.Transition{State: store.NodeRequested, FromVersion: "v1.0.0", UpgradeCall: true, Detail: "upgrade v1.0.0 -> v2.0.0"})
	f.record(t, 1, "c00000/n1", store.Transition{State: store.NodeFailed, Error: "health gate: service addons unhealthy", RolledBack: true})

	var d NodeDetail
	f.getJSON(t, "/api/v1/nodes/c00000/n1", roToken, &d)
	require.Equal(t, "failed", d.Health)
	require.Len(t, d.History, 1)
	h := d.History[0]
	require.Equal(t, "rollback", h.Kind)
	require.Equal(t, "health gate: service addons unhealthy", h.Error)
	require.Equal(t, "v1.0.0", h.FromVersion)
	require.Equal(t, "v2.0.0", h.Target)
	require.Equal(t, 1, h.UpgradeCalls)
	require.Len(t, h.Steps, 2)
	require.Equal(t, "node.requested", h.Steps[0].Action)
	require.Equal(t, "upgrade v1.0.0 -> v2.0.0", h.Steps[0].Detail)
	require.Contains(t, d.FactsSource, "not connected", "the page says events and kernel log come from the hub")
	require.Empty(t, d.Events)

	resp, b := f.do(t, "GET", "/api/v1/nodes/c00000/n9", roToken, nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, "node not found: c00000/n9", errorText(t, b))
}

// A node's history shows its staging lines with its transitions, in the
// order written: the node page reads the audit ids listed on the node's
// node and staging rows (store migration 0014).
func TestNodeHistoryIncludesStagingLines(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	lease, err := f.st.AcquireLease(t.Context(), f.id, "here", 1, time.Minute, false, "engine@test")
	require.NoError(t, err)
	require.NoError(t, lease.RecordStaging(t.Context(), "engine@test", store.Staging{Node: 1, Subject: "c00000/n1", State: store.StagePulling}))
	f.record(t, 0, "c00000/n0", store.Transition{State: store.NodeRequested, Detail: "another node"})
	require.NoError(t, lease.RecordStaging(t.Context(), "engine@test", store.Staging{Node: 1, Subject: "c00000/n1", State: store.StageStaged, Bytes: 42}))
	f.record(t, 1, "c00000/n1", store.Transition{State: store.NodeRequested, FromVersion: "v1.0.0", Detail: "upgrade v1.0.0 -> v2.0.0"})

	var d NodeDetail
	f.getJSON(t, "/api/v1/nodes/c00000/n1", roToken, &d)
	require.Len(t, d.History, 1)

	var steps []string
	for _, st := range d.History[0].Steps {
		steps = append(steps, st.Action+" "+st.Detail)
	}

	require.Equal(t, []string{"staging.pulling ", "staging.staged bytes=42 ", "node.requested upgrade v1.0.0 -> v2.0.0"}, steps)
}

// The rollout detail: CLI status, budgets used and left, failures with the gate's reason.
func TestRolloutDetail(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)
	f.record(t, 1, "c00000/n1", store.Transition{State: store.NodeFailed, Error: "health gate: service addons unhealthy"})
	f.record(t, 0, "c00000/n0", store.Transition{State: store.NodeDone})

	var d RolloutDetail
	f.getJSON(t, "/api/v1/rollouts/latest", roToken, &d)
	require.Equal(t, f.id, d.Status.RolloutID)
	require.Equal(t, 8, d.Status.Nodes)
	require.Equal(t, Budget{Allowed: 10, Used: 1, Left: 9}, d.Budget)
	require.Equal(t, Budget{Allowed: 0, Used: 1, Left: 0}, d.WaveBudgets[0])
	require.Equal(t, []Failure{{Cluster: "c00000", Node: "n1", Site: "site-0000", Wave: 0, Error: "health gate: service addons unhealthy", At: d.Failures[0].At}}, d.Failures)

	var list []store.Rollout
	f.getJSON(t, "/api/v1/rollouts", roToken, &list)
	require.Len(t, list, 1)

	resp, b := f.do(t, "GET", "/api/v1/rollouts/r-nope", roToken, nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, `rollout "r-nope" not found`, errorText(t, b))
}

// Nodes waiting for their window are counted per site with the next opening.
func TestRolloutWaitingForWindows(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f := newFixture(t, smallFleet(true), func(o *Options) { o.Now = func() time.Time { return now } })

	var d RolloutDetail
	f.getJSON(t, "/api/v1/rollouts/latest", roToken, &d)
	require.Equal(t, 2, d.Status.WaitingForWindow, "canary wave: cluster c00000's two nodes")
	require.Equal(t, []WaitingSite{{Site: "site-0000", Nodes: 2, NextOpen: d.Waiting[0].NextOpen}}, d.Waiting)
	require.Equal(t, time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC), d.Waiting[0].NextOpen.UTC())
}

// The live stream sends the detail, then a new event when a node changes.
func TestEventsStreamUpdates(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	req, _ := http.NewRequest("GET", f.ts.URL+"/api/v1/rollouts/latest/events", nil)
	req.Header.Set("Authorization", "Bearer "+roToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))

	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)

	next := func() RolloutDetail {
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var d RolloutDetail
				require.NoError(t, json.Unmarshal([]byte(data), &d))

				return d
			}
		}

		t.Fatalf("stream ended: %v", sc.Err())

		return RolloutDetail{}
	}

	require.Equal(t, 0, next().Status.Done)
	f.record(t, 0, "c00000/n0", store.Transition{State: store.NodeDone})
	require.Equal(t, 1, next().Status.Done)
}

// No API answer carries a token, a token hash or a credential path.
func TestNoSecretsInAnswers(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)
	f.record(t, 0, "c00000/n0", store.Transition{State: store.NodeDone})

	secrets := []string{opToken, roToken, sha(opToken), sha(roToken), filepath.Join(f.dir, "creds"), "talosconfig", "lease_token", "leaseToken"}

	for _, p := range []string{"/api/v1/me", "/api/v1/fleet", "/api/v1/clusters", "/api/v1/nodes/c00000/n0", "/api/v1/rollouts", "/api/v1/rollouts/latest", "/"} {
		resp, b := f.do(t, "GET", p, opToken, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, p)

		for _, s := range secrets {
			require.False(t, has(b, s), "%s shows %q", p, s)
		}
	}
}

// Config validation names file, entry and field.
func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "overview.yaml")
	require.NoError(t, os.WriteFile(p, []byte(`users:
  - name: alice
    role: admin
    tokenSHA256: hunter2
  - name: bob
    role: read-only
    certCommonName: bob
`), 0o600))

	_, err := LoadConfig(p)
	require.EqualError(t, err, p+`: users[0] (alice): role: "admin": want operator or read-only`+"\n"+
		p+`: users[0] (alice): tokenSHA256: want 64 hex digits, the SHA-256 of the token (printf %s "$TOKEN" | sha256sum), not the token itself`+"\n"+
		p+`: users[1] (bob): certCommonName: needs tls.clientCA (the CA client certificates are checked against)`)

	require.NoError(t, os.WriteFile(p, []byte("users: []\nextra: 1\n"), 0o600))
	_, err = LoadConfig(p)
	require.ErrorContains(t, err, "field extra not found")
}

// The session probe answers without credentials (the login page needs no failed request).
func TestSessionProbe(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	resp, b := f.do(t, "GET", "/api/v1/session", "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.JSONEq(t, `{"authenticated":false}`, string(b))

	_, b = f.do(t, "GET", "/api/v1/session", opToken, nil)
	require.JSONEq(t, `{"authenticated":true,"name":"alice","role":"operator","method":"token"}`, string(b))
}

// Abort with no live executor: recorded and handed to the executor (which
// finishes in-flight nodes), or refused with the CLI command when there is
// none, recording nothing.
func TestAbortWithoutExecutorProcess(t *testing.T) {
	f := newFixture(t, smallFleet(false), nil)

	resp, b := f.do(t, "POST", "/api/v1/rollouts/latest/abort", opToken, nil)
	require.Equal(t, http.StatusNotImplemented, resp.StatusCode)
	require.Equal(t, "no process executes rollout "+f.id+" and this server does not execute rollouts: run fleetctl rollout abort --db <db> (it finishes the in-flight nodes)", errorText(t, b))

	r, err := f.st.Rollout(t.Context(), f.id)
	require.NoError(t, err)
	require.Equal(t, store.DesiredRun, r.Desired, "nothing recorded")

	var got []string

	g := newFixture(t, smallFleet(false), func(o *Options) {
		o.Executor = func(_ context.Context, id, actor string) error {
			got = append(got, id+" "+actor)

			return nil
		}
	})

	resp, b = g.do(t, "POST", "/api/v1/rollouts/latest/abort", opToken, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))

	var res ActionResult
	require.NoError(t, json.Unmarshal(b, &res))
	require.Equal(t, "executing", res.Outcome)
	require.Equal(t, []string{g.id + " alice (overview, token, operator)"}, got)

	r, err = g.st.Rollout(t.Context(), g.id)
	require.NoError(t, err)
	require.Equal(t, store.DesiredAbort, r.Desired)
}
