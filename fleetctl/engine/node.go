package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/labfleet/labfleet/fleetctl/driver"
	"github.com/labfleet/labfleet/fleetctl/plan"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// processNode drives one node from its recorded state to done or failed and
// reports whether it failed. Pending nodes start only when admitted; nodes
// already requested or accepted (before a crash) are reconciled regardless
// of pause or abort, so nothing is left half-upgraded.
func (e *execution) processNode(ctx context.Context, wave int, n *store.Node) (failed bool) {
	if terminal(n.State) {
		return n.State == store.NodeFailed
	}

	subject := n.Cluster + "/" + n.Name

	// The node's calls each take a timeout context; made from one context
	// of the node's own, they do not all register with the rollout's
	// context, which hundreds of node workers share (and lock).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if isInFlight(n.State) {
		defer func() {
			if terminal(n.State) {
				e.reconciledOne()
			}
		}()

		// A node in flight holds its cap slots like any other.
		release, err := e.acquireCaps(ctx, n, false)
		if err != nil {
			return false
		}
		defer release()
	}

	if n.State == store.NodePending {
		release, err := e.admit(ctx, n)
		if err != nil {
			return false
		}
		defer release()
	}

	node, err := e.opts.Driver.Open(ctx, e.target(n))
	if err != nil {
		if isInFlight(n.State) {
			// The node may have been changed and only it can tell: never
			// guess "failed". Leave its record and pause for the operator.
			e.stop(store.StatePaused, fmt.Sprintf("cannot connect to %s to ask what it did (%v); its record stays %s: fix access, then resume", subject, err, n.State))

			return false
		}

		return e.untouched(ctx, n, fmt.Sprintf("opening node: %v", err))
	}
	defer node.Close() //nolint:errcheck

	nr := &nodeRun{e: e, n: n, node: node, subject: subject}
	target := e.rollout.Version

	defer func() {
		if nr.cluster != nil {
			nr.cluster.Close() //nolint:errcheck
		}
	}()

	if n.State == store.NodeRollingBack {
		// A rollback was about to be sent (or sent) when the previous process
		// stopped: finish watching it, never send it again.
		return e.fail(ctx, wave, n, node, n.Error, true)
	}

	switch n.State {
	case store.NodePending:
		v, err := nr.version(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return false
			}

			return e.untouched(ctx, n, fmt.Sprintf("unreachable before upgrade: %v", err))
		}

		if v == target {
			// The same tag may name another build: only the image decides.
			why, err := nr.imageMismatch(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return false
				}

				return e.untouched(ctx, n, fmt.Sprintf("unreachable before upgrade: %v", err))
			}

			if why == "" {
				return !nr.record(ctx, store.Transition{State: store.NodeDone, FromVersion: v, Detail: "already at " + target})
			}

			e.log.Info("node reports the target tag but another image: upgrading", "node", subject, "why", why)
		}

		// The version call may have taken long: check the window right
		// before the node is asked to change.
		if !e.fits(n, e.opts.Clock.Now()) {
			if err := e.waitWindow(ctx, n); err != nil {
				return false
			}
		}

		if e.stager != nil {
			why, err := e.awaitStaged(ctx, n)
			if err != nil {
				return false
			}

			if why != "" {
				return e.untouched(ctx, n, "not switched: "+why)
			}
		}

		// Written before the node is asked: after a crash this record is what
		// tells resume that the node may have received the request.
		if !nr.record(ctx, store.Transition{State: store.NodeRequested, FromVersion: v, UpgradeCall: true, Detail: "upgrade " + v + " -> " + target}) {
			return false
		}

		if failed, ok := nr.upgrade(ctx, wave); !ok {
			return failed
		}
	case store.NodeRequested:
		// The request may or may not have reached the node: ask it.
		v, err := nr.waitReachable(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return false
			}

			return e.fail(ctx, wave, n, node, fmt.Sprintf("reconciling: node unreachable: %v", err), true)
		}

		if v == target && nr.runsTarget(ctx) {
			e.log.Info("reconciled: node already runs the target version", "node", subject)

			if !nr.record(ctx, store.Transition{State: store.NodeAccepted, Detail: "reconciled: node reports " + v}) {
				return false
			}
		} else {
			if nr.fellBack(ctx) {
				e.log.Info("reconciled: node already tried the target version and fell back", "node", subject)

				return e.fail(ctx, wave, n, node, "reconciled: node tried "+target+" before the crash and fell back to "+v, true)
			}

			// Asking again changes the node: only inside its window (its
			// cap slots are already held).
			err := e.waitWindow(ctx, n)

			switch {
			case errors.Is(err, errStop):
				if !nr.settleUnrepeated(ctx, v) {
					return false
				}
			case err != nil:
				return false
			default:

				if !nr.record(ctx, store.Transition{State: store.NodeRequested, UpgradeCall: true, Detail: "reconciled: node reports " + v + ", requesting again"}) {
					return false
				}

				if failed, ok := nr.upgrade(ctx, wave); !ok {
					return failed
				}
			}
		}
	}

	// n.State is now accepted.
	if reason, ok := nr.gate(ctx); !ok {
		if ctx.Err() != nil {
			return false
		}

		return e.fail(ctx, wave, n, node, reason, true)
	}

	return !nr.record(ctx, store.Transition{State: store.NodeDone, Detail: "healthy at " + target})
}

type nodeRun struct {
	e       *execution
	n       *store.Node
	node    driver.Node
	subject string
	cluster driver.ClusterChecker // opened by the first cluster check
}

// record commits a transition and mirrors it in memory; false if the store failed.
func (r *nodeRun) record(ctx context.Context, tr store.Transition) bool {
	tr.Node, tr.Subject = r.n.ID, r.subject

	// The node was (or is about to be) touched: the record must land even if
	// ctx is being cancelled, or resume would lose track of it.
	if err := r.e.lease.RecordNode(context.WithoutCancel(ctx), r.e.opts.Actor, tr); err != nil {
		r.e.storeFailed(fmt.Errorf("recording %s as %s: %w", r.subject, tr.State, err))

		return false
	}

	r.n.State = tr.State
	if tr.FromVersion != "" {
		r.n.FromVersion = tr.FromVersion
	}

	if tr.RolledBack {
		r.n.RolledBack = true
	}

	if tr.UpgradeCall {
		r.n.UpgradeCalls++
	}

	return true
}

// settleUnrepeated handles a node left "requested" that reports its old
// version while the rollout is stopping, so the request is not repeated.
// Paused: it stays requested for the next run. Aborted or halted: the node is
// watched for the gate timeout in case the earlier request did land (then it
// is recorded accepted and true is returned, so its gate runs); otherwise it
// is recorded skipped.
func (r *nodeRun) settleUnrepeated(ctx context.Context, was string) bool {
	if r.e.stopped() == store.StatePaused {
		return false
	}

	err := r.e.poll(ctx, r.e.plan.Health.Timeout.D(), func() error {
		v, err := r.version(ctx)
		if err == nil && v != r.e.rollout.Version {
			err = errors.New("still on " + v)
		}

		return err
	})

	switch {
	case err == nil:
		return r.record(ctx, store.Transition{State: store.NodeAccepted, Detail: "reconciled while stopping: the earlier request landed"})
	case ctx.Err() == nil:
		r.record(ctx, store.Transition{State: store.NodeSkipped, Detail: "rollout stopping: node stayed on " + was + "; request not repeated"})
	}

	return false
}

// fellBack asks a node that can tell whether it already tried the target
// version and fell back by itself; unknown counts as no.
func (r *nodeRun) fellBack(ctx context.Context) bool {
	fr, ok := r.node.(driver.FallbackReporter)
	if !ok {
		return false
	}

	c, cancel := r.call(ctx)
	defer cancel()

	yes, err := fr.FellBackFrom(c, r.e.rollout.Version)
	if err != nil {
		r.e.log.Debug("node cannot report fallbacks", "node", r.subject, "err", err)

		return false
	}

	return yes
}

func (r *nodeRun) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.e.callTimeout())
}

func (e *execution) callTimeout() time.Duration {
	switch {
	case e.opts.CallTimeout > 0:
		return e.opts.CallTimeout
	case e.plan.Health.CallTimeout > 0:
		return e.plan.Health.CallTimeout.D()
	}

	return plan.DefaultCallTimeout
}

func (e *execution) upgradeTimeout() time.Duration {
	if u := e.plan.Health.UpgradeTimeout.D(); u > 0 {
		return u
	}

	return plan.DefaultUpgradeTimeout
}

// uncertain: the call may have reached the node although no answer came
// back (timeout, connection lost). Only the node can tell what happened.
func uncertain(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}

	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Unavailable, codes.Canceled:
		return true
	}

	return false
}

func (r *nodeRun) version(ctx context.Context) (string, error) {
	c, cancel := r.call(ctx)
	defer cancel()

	return r.node.Version(c)
}

// upgrade asks the node to upgrade; ok is false when processing must stop
// here (failed tells whether the node was recorded as failed).
func (r *nodeRun) upgrade(ctx context.Context, wave int) (failed, ok bool) {
	for attempt := 1; ; attempt++ {
		c, cancel := context.WithTimeout(ctx, r.e.upgradeTimeout())
		err := r.send(c)

		cancel()

		switch {
		case err == nil:
			return false, r.record(ctx, store.Transition{State: store.NodeAccepted, Detail: "upgrade accepted"})
		case errors.Is(err, driver.ErrInProgress):
			return false, r.record(ctx, store.Transition{State: store.NodeAccepted, Detail: "upgrade already in progress on node"})
		case ctx.Err() != nil:
			return false, false // interrupted: stays requested, resume asks the node
		case !uncertain(err):
			return r.e.fail(ctx, wave, r.n, r.node, fmt.Sprintf("upgrade refused: %v", err), false), false
		}

		// No answer is not a refusal: the node may be installing (Talos pulls
		// the image inside the call). Ask it, as resume would.
		v, verr := r.waitReachable(ctx)

		switch {
		case ctx.Err() != nil:
			return false, false
		case verr == nil && v == r.e.rollout.Version:
			return false, r.record(ctx, store.Transition{State: store.NodeAccepted, Detail: "upgrade call got no answer (" + err.Error() + "); node reports " + v})
		case attempt >= 2:
			return r.e.fail(ctx, wave, r.n, r.node, fmt.Sprintf("upgrade call got no answer twice within %s (%v); outcome unknown", r.e.upgradeTimeout(), err), true), false
		}

		// Asking again is safe: a node still installing the first request
		// answers "in progress".
		if !r.record(ctx, store.Transition{State: store.NodeRequested, UpgradeCall: true,
			Detail: "upgrade call got no answer (" + err.Error() + "); asking again"}) {
			return false, false
		}
	}
}

// send asks the node to change to the target image: the upgrade call, or
// with staging the switch to the image it already holds. A node that lost
// the staged image (it rebooted since, or staging ran in a process that
// crashed) pulls it now, inside its window: slower, never wrong.
func (r *nodeRun) send(ctx context.Context) error {
	image := r.e.rollout.Image

	if r.e.stager == nil {
		return r.node.Upgrade(ctx, image)
	}

	st, ok := r.node.(driver.Stager)
	if !ok {
		return fmt.Errorf("the plan stages but driver %q cannot", r.e.opts.DriverName)
	}

	err := st.Switch(ctx, image)
	if errors.Is(err, driver.ErrNotStaged) {
		r.e.log.Warn("node lost its staged image: pulling inside its window", "node", r.subject)

		if err := st.Stage(ctx, image); err != nil {
			return err
		}

		err = st.Switch(ctx, image)
	}

	return err
}

// waitReachable polls the node's version until it answers or the gate times out.
func (r *nodeRun) waitReachable(ctx context.Context) (string, error) {
	var v string

	err := r.e.poll(ctx, r.e.plan.Health.Timeout.D(), func() (err error) {
		v, err = r.version(ctx)

		return err
	})

	return v, err
}

// check is one health probe: target version and all services healthy.
func (r *nodeRun) check(ctx context.Context) (bool, string) {
	ok, _, why := r.checkVersion(ctx)

	return ok, why
}

// checkVersion is check that also says whether the node answered with
// another version than the target (it may have fallen back).
func (r *nodeRun) checkVersion(ctx context.Context) (bool, bool, string) {
	// One call timeout for the probe's calls (image or version, health,
	// cluster), not one each: a timer and context per call were a visible
	// share of a large rollout's CPU time, and a probe answers in
	// milliseconds against a timeout of seconds.
	pc, cancel := r.call(ctx)
	defer cancel()

	if ir, ok := r.node.(driver.ImageReporter); ok {
		// The image answer carries the version too: one call per probe.
		id, err := ir.Image(pc)

		switch {
		case err != nil:
			return false, false, err.Error()
		case id.Version != r.e.rollout.Version:
			return false, true, fmt.Sprintf("node reports version %s, want %s", id.Version, r.e.rollout.Version)
		}

		if why := r.e.want.Mismatch(id); why != "" {
			return false, false, why
		}
	} else {
		v, err := r.node.Version(pc)
		if err != nil {
			return false, false, err.Error()
		}

		if v != r.e.rollout.Version {
			return false, true, fmt.Sprintf("node reports version %s, want %s", v, r.e.rollout.Version)
		}
	}

	if ok, why := r.checkHealth(pc); !ok {
		return false, false, why
	}

	ok, why := r.checkCluster(ctx, pc)

	return ok, false, why
}

// imageMismatch says why the node does not run the plan's image ("" when
// it does) for nodes that report their image (driver.ImageReporter); for
// others the version tag, already compared, is all there is.
func (r *nodeRun) imageMismatch(ctx context.Context) (string, error) {
	ir, ok := r.node.(driver.ImageReporter)
	if !ok {
		return "", nil
	}

	c, cancel := r.call(ctx)
	defer cancel()

	id, err := ir.Image(c)
	if err != nil {
		return "", err
	}

	return r.e.want.Mismatch(id), nil
}

// runsTarget: the node runs the plan's image; unknown counts as no.
func (r *nodeRun) runsTarget(ctx context.Context) bool {
	why, err := r.imageMismatch(ctx)

	return err == nil && why == ""
}

// checkCluster asks the node's cluster (health.kubernetes): Kubernetes node
// Ready, and on control plane nodes the static pods and etcd members, within
// the probe's call context pc; opening the cluster connection uses ctx (the
// connection outlives the probe).
func (r *nodeRun) checkCluster(ctx, pc context.Context) (bool, string) {
	if !r.e.plan.Health.Kubernetes {
		return true, ""
	}

	if r.cluster == nil {
		cc, err := r.e.opts.Cluster.OpenCluster(ctx, r.e.target(r.n))
		if err != nil {
			return false, "opening cluster: " + err.Error()
		}

		r.cluster = cc
	}

	st, err := r.cluster.Cluster(pc)
	if err != nil {
		return false, "cluster: " + err.Error()
	}

	if p := st.Problems(r.e.target(r.n)); len(p) > 0 {
		return false, strings.Join(p, "; ")
	}

	return true, ""
}

// checkHealth asks the node's services within the probe's call context.
func (r *nodeRun) checkHealth(pc context.Context) (bool, string) {
	h, err := r.node.Health(pc)
	if err != nil {
		return false, err.Error()
	}

	if !h.Healthy() {
		if len(h.Services) == 0 {
			return false, "node reports no services"
		}

		return false, "unhealthy services: " + strings.Join(h.Unhealthy(), ", ")
	}

	return true, ""
}

// gate waits for the node to pass its health check within the timeout, then
// to stay healthy for the soak time.
func (r *nodeRun) gate(ctx context.Context) (string, bool) {
	clock := r.e.opts.Clock
	hg := r.e.plan.Health

	var last string

	fellBack := false

	err := r.e.poll(ctx, hg.Timeout.D(), func() error {
		ok, otherVersion, why := r.checkVersion(ctx)
		if ok {
			return nil
		}

		last = why

		// A node that tried the target and fell back by itself (systemd-boot's
		// boot counter, or labos marking an unhealthy entry bad) will not get
		// there: fail now instead of waiting out the timeout. Install removes
		// an earlier failed entry of the same version, so this is this attempt.
		if otherVersion && r.fellBack(ctx) {
			fellBack = true

			return backoff.Permanent(errors.New(why))
		}

		return errors.New(why)
	})

	switch {
	case fellBack:
		return "node tried " + r.e.rollout.Version + " and fell back: " + last, false
	case ctx.Err() != nil:
		return ctx.Err().Error(), false
	case err != nil:
		return fmt.Sprintf("health gate timed out after %s: %s", hg.Timeout.D(), last), false
	}

	soakEnd := clock.Now().Add(hg.Soak.D())
	for clock.Now().Before(soakEnd) {
		if err := clock.Sleep(ctx, min(hg.Interval.D(), soakEnd.Sub(clock.Now()))); err != nil {
			return err.Error(), false
		}

		if ok, why := r.check(ctx); !ok {
			if ctx.Err() != nil {
				return ctx.Err().Error(), false
			}

			return "unhealthy during soak: " + why, false
		}
	}

	return "", true
}

// untouched records a node that could not be reached before anything was
// sent to it as skipped: it still runs its old image, so it is no failure of
// the image and does not count against a budget. It returns true so the
// rest of its cluster is skipped too (a control plane node that cannot be
// reached may already cost etcd a member).
func (e *execution) untouched(ctx context.Context, n *store.Node, reason string) bool {
	subject := n.Cluster + "/" + n.Name
	e.log.Warn("node not reached before its upgrade; skipped", "node", subject, "reason", reason)

	tr := store.Transition{Node: n.ID, Subject: subject, State: store.NodeSkipped, Error: reason,
		Detail: "not touched; not counted against the budget"}
	if err := e.lease.RecordNode(context.WithoutCancel(ctx), e.opts.Actor, tr); err != nil {
		e.storeFailed(fmt.Errorf("recording %s as skipped: %w", subject, err))

		return true
	}

	n.State = store.NodeSkipped

	return true
}

// fail records a failed node, rolling it back first when the plan says so and
// the node may have changed. It counts the failure against the budgets and
// returns true.
func (e *execution) fail(ctx context.Context, wave int, n *store.Node, node driver.Node, reason string, touched bool) bool {
	subject := n.Cluster + "/" + n.Name
	e.log.Warn("node failed", "node", subject, "reason", reason)

	tr := store.Transition{Node: n.ID, Subject: subject, State: store.NodeFailed, Error: reason}

	if touched && node != nil && e.plan.Rollback() {
		var ok bool

		n.Error = reason // carried by the rolling-back row, for a resume

		tr.RolledBack, tr.Detail, ok = e.rollback(ctx, n, node)
		if !ok {
			return true // the store failed or the lease was lost: stop here
		}
	}

	if err := e.lease.RecordNode(context.WithoutCancel(ctx), e.opts.Actor, tr); err != nil {
		e.storeFailed(fmt.Errorf("recording %s as failed: %w", subject, err))

		return true
	}

	n.State = store.NodeFailed
	n.RolledBack = tr.RolledBack

	e.addFailure(wave)

	return true
}

// rollback brings a failed node back to the image it ran before, at most
// once per failure. It first asks which image the node runs: a rollback on
// Talos boots "the other" boot entry, so one sent to a node already back on
// its previous image (it fell back, or never installed the new one because
// it was still pulling it) would boot the failed image. Before the call a
// "rolling-back" row is written, so a crash in between is never mistaken for
// a node that still needs one. rolledBack reports whether the node is known
// to run its previous image again; ok is false when the row could not be
// written (nothing was sent).
func (e *execution) rollback(ctx context.Context, n *store.Node, node driver.Node) (rolledBack bool, detail string, ok bool) {
	nr := &nodeRun{e: e, n: n, node: node, subject: n.Cluster + "/" + n.Name}
	target := e.rollout.Version

	if n.State == store.NodeRollingBack {
		// Left by a previous process: the call may have been sent. Never repeat it.
		return nr.awaitPrevious(ctx, "rollback was requested before a restart; not repeated")
	}

	v, err := nr.version(ctx)

	switch {
	case err != nil:
		return false, "no rollback sent: the node did not say which image it runs: " + err.Error(), true
	case n.FromVersion != "" && v == n.FromVersion:
		if nr.fellBack(ctx) {
			return true, "node fell back to " + v + " by itself; no rollback sent", true
		}

		return false, "node still runs its previous image " + v + " (the upgrade may not be installed yet); no rollback sent", true
	case v != target:
		return false, "node runs " + v + ", neither " + target + " nor its previous image; no rollback sent", true
	}

	if !nr.record(ctx, store.Transition{State: store.NodeRollingBack, Error: n.Error, Detail: "node runs " + v + "; asking it to boot " + n.FromVersion}) {
		return false, "", false
	}

	c, cancel := nr.call(ctx)
	err = node.Rollback(c)

	cancel()

	if err != nil {
		// The call may still have reached the node (a timeout): watch, do not resend.
		return nr.awaitPrevious(ctx, "rollback call failed ("+err.Error()+"); not repeated")
	}

	return nr.awaitPrevious(ctx, "rollback sent")
}

// awaitPrevious polls (up to the gate timeout) for the node to report the
// version it ran before the upgrade.
// ok is false when ctx ended first: the row stays rolling-back for a resume.
func (r *nodeRun) awaitPrevious(ctx context.Context, sent string) (bool, string, bool) {
	if r.n.FromVersion == "" {
		return false, sent + "; previous version unknown", true
	}

	hg := r.e.plan.Health

	// A node going away for its reboot answers with errors: keep asking.
	err := r.e.poll(ctx, hg.Timeout.D(), func() error {
		v, err := r.version(ctx)
		if err == nil && v != r.n.FromVersion {
			err = errors.New("runs " + v)
		}

		return err
	})

	switch {
	case err == nil:
		return true, sent + "; node runs " + r.n.FromVersion + " again", true
	case ctx.Err() != nil:
		return false, "", false
	}

	return false, fmt.Sprintf("%s; node did not report %s within %s", sent, r.n.FromVersion, hg.Timeout.D()), true
}
