package overview

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/labfleet/labfleet/fleetctl/store"
)

// ActionResult is the answer to POST /api/v1/rollouts/{id}/{pause|resume|abort}.
type ActionResult struct {
	Rollout   string `json:"rollout"`
	Requested string `json:"requested"` // pause, run or abort
	By        string `json:"by"`
	// Outcome says what happened: "requested" (the executing process stops
	// after its in-flight nodes), "paused" (no process ran it), "executing"
	// (this server started the execution).
	Outcome string `json:"outcome"`
	State   string `json:"state"`
}

type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func (s *Server) action(w http.ResponseWriter, r *http.Request, id Identity) {
	res, err := s.Control(r.Context(), rolloutID(r), r.PathValue("action"), id)

	var he *httpError

	switch {
	case errors.As(err, &he):
		writeError(w, he.code, he.msg)
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("rollout %q not found", r.PathValue("id")))
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		s.opts.Logger.Info("overview: action", "user", id.Name, "action", r.PathValue("action"), "rollout", res.Rollout, "outcome", res.Outcome)
		writeJSON(w, r, res)
	}
}

// Control applies an operator's pause, resume or abort to rollout rid ("":
// the latest) with the same store and engine calls as `fleetctl rollout
// pause|resume|abort`; the store writes the audit line naming who.
func (s *Server) Control(ctx context.Context, rid, action string, who Identity) (ActionResult, error) {
	st := s.opts.Store
	actor := who.actor()

	r, err := st.Rollout(ctx, rid)
	if err != nil {
		return ActionResult{}, err
	}

	res := ActionResult{Rollout: r.ID, By: actor}

	if r.State != store.StateRunning && r.State != store.StatePaused {
		return res, &httpError{http.StatusConflict, fmt.Sprintf("rollout %s is %s: nothing to %s", r.ID, r.State, action)}
	}

	live := st.ExecutorLive(r)

	switch action {
	case "pause", "abort":
		desired := store.DesiredPause
		if action == "abort" {
			desired = store.DesiredAbort
		}

		res.Requested = desired

		switch {
		case live:
			if err := st.SetDesired(ctx, r.ID, desired, actor); err != nil {
				return res, err
			}

			res.Outcome = "requested"
		case desired == store.DesiredPause:
			if err := st.SetDesired(ctx, r.ID, desired, actor); err != nil {
				return res, err
			}

			if err := st.SetState(ctx, r.ID, store.StatePaused, "paused by operator (no process was running it)", actor); err != nil {
				return res, err
			}

			res.Outcome = "paused"
		default:
			// Abort without an executor must finish in-flight nodes (health
			// gate, rollback): only an engine can; record nothing if none may run here.
			if s.opts.Executor == nil {
				return res, &httpError{http.StatusNotImplemented, fmt.Sprintf(
					"no process executes rollout %s and this server does not execute rollouts: run fleetctl rollout abort --db <db> (it finishes the in-flight nodes)", r.ID)}
			}

			if err := st.SetDesired(ctx, r.ID, desired, actor); err != nil {
				return res, err
			}

			if err := s.opts.Executor(context.WithoutCancel(ctx), r.ID, actor); err != nil {
				return res, fmt.Errorf("starting the abort of %s: %w", r.ID, err)
			}

			res.Outcome = "executing"
		}
	case "resume":
		res.Requested = store.DesiredRun

		switch {
		case live && r.Desired == store.DesiredRun:
			return res, &httpError{http.StatusConflict, fmt.Sprintf("rollout %s is already executed by %s pid %d", r.ID, r.LeaseHost, r.LeasePID)}
		case live:
			return res, &httpError{http.StatusConflict, fmt.Sprintf("rollout %s is still stopping (%s pid %d finishes its in-flight nodes); resume once it is %s",
				r.ID, r.LeaseHost, r.LeasePID, store.StatePaused)}
		case s.opts.Executor == nil:
			return res, &httpError{http.StatusNotImplemented, fmt.Sprintf(
				"this server does not execute rollouts: run fleetctl rollout resume %s --db <db>", r.ID)}
		}

		// engine.Resume records desired=run and state running with actor.
		if err := s.opts.Executor(context.WithoutCancel(ctx), r.ID, actor); err != nil {
			return res, fmt.Errorf("resuming %s: %w", r.ID, err)
		}

		res.Outcome = "executing"
	default:
		return res, &httpError{http.StatusNotFound, fmt.Sprintf("unknown action %q: want pause, resume or abort", action)}
	}

	cur, err := st.Rollout(ctx, r.ID)
	if err != nil {
		return res, err
	}

	res.State = cur.State

	return res, nil
}
