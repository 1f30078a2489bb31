package overview

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labfleet/labfleet/fleetctl/store"
)

func (s *Server) routes() {
	m := http.NewServeMux()

	m.HandleFunc("POST /api/v1/login", s.login)
	m.HandleFunc("POST /api/v1/logout", s.logout)
	m.HandleFunc("GET /api/v1/session", s.session)
	m.HandleFunc("GET /api/v1/me", s.read(s.me))
	m.HandleFunc("GET /api/v1/fleet", s.read(s.fleet))
	m.HandleFunc("GET /api/v1/clusters", s.read(s.clusters))
	m.HandleFunc("GET /api/v1/nodes/{cluster}/{node}", s.read(s.node))
	m.HandleFunc("GET /api/v1/rollouts", s.read(s.rollouts))
	m.HandleFunc("GET /api/v1/rollouts/{id}", s.read(s.rollout))
	m.HandleFunc("GET /api/v1/rollouts/{id}/events", s.read(s.events))
	m.HandleFunc("POST /api/v1/rollouts/{id}/{action}", s.operate(s.action))
	m.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no API endpoint %s %s (see docs/overview-api.md)", r.Method, r.URL.Path))
	})
	m.Handle("/", staticHandler())

	s.mux = m
}

type apiError struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(apiError{Error: msg}) //nolint:errcheck
}

// writeJSON encodes v, gzip-compressed when the client accepts it (the fleet
// answer for 30,000 nodes shrinks about tenfold).
func writeJSON(w http.ResponseWriter, r *http.Request, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")

	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Encoding", "gzip")

		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		defer gz.Close() //nolint:errcheck

		json.NewEncoder(gz).Encode(v) //nolint:errcheck

		return
	}

	json.NewEncoder(w).Encode(v) //nolint:errcheck
}

type handler func(http.ResponseWriter, *http.Request, Identity)

// read admits any identity.
func (s *Server) read(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := s.auth.identify(r)
		if !ok {
			writeError(w, http.StatusUnauthorized, "authentication required: log in with a token (POST /api/v1/login or Authorization: Bearer) or a client certificate")

			return
		}

		h(w, r, id)
	}
}

// operate admits operators only, and only same-origin browser requests
// (cookies are SameSite=Strict; the Origin check also covers tools that
// forward cookies).
func (s *Server) operate(h handler) http.HandlerFunc {
	return s.read(func(w http.ResponseWriter, r *http.Request, id Identity) {
		if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("cross-origin request from %s refused", o))

			return
		}

		if id.Role != RoleOperator {
			s.opts.Logger.Warn("overview: action refused", "user", id.Name, "role", id.Role, "path", r.URL.Path)
			writeError(w, http.StatusForbidden, fmt.Sprintf("%s has role %s, which may not %s rollouts: the %s role is required",
				id.Name, id.Role, r.PathValue("action"), RoleOperator))

			return
		}

		h(w, r, id)
	})
}

func sameOrigin(origin string, r *http.Request) bool {
	o := strings.TrimPrefix(strings.TrimPrefix(origin, "https://"), "http://")

	return o == r.Host
}

type loginReq struct {
	Token string `json:"token"`
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var req loginReq
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "login: want JSON {\"token\": \"...\"}")

		return
	}

	id, ok := s.auth.byToken(req.Token)
	if !ok {
		s.opts.Logger.Warn("overview: login refused", "remote", r.RemoteAddr)
		writeError(w, http.StatusUnauthorized, "login: unknown token")

		return
	}

	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: s.auth.newSession(id), Path: "/", HttpOnly: true, Secure: s.opts.Secure,
		SameSite: http.SameSiteStrictMode, MaxAge: int(sessionTTL / time.Second),
	})
	s.opts.Logger.Info("overview: login", "user", id.Name, "role", id.Role)
	writeJSON(w, r, id)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	s.auth.endSession(r)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: s.opts.Secure, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

// Session is GET /api/v1/session: whether the caller is logged in, answered
// without credentials (200 either way) so the page can show its login form
// without a failed request in the browser console.
type Session struct {
	Authenticated bool `json:"authenticated"`
	*Identity
}

func (s *Server) session(w http.ResponseWriter, r *http.Request) {
	if id, ok := s.auth.identify(r); ok {
		writeJSON(w, r, Session{Authenticated: true, Identity: &id})

		return
	}

	writeJSON(w, r, Session{})
}

func (s *Server) me(w http.ResponseWriter, r *http.Request, id Identity) { writeJSON(w, r, id) }

func (s *Server) fleet(w http.ResponseWriter, r *http.Request, _ Identity) {
	snap, err := s.model.get(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())

		return
	}

	writeJSON(w, r, snap.fleet(filterFrom(r.URL.Query()), s.opts.Facts, s.opts.Now()))
}

func intParam(r *http.Request, name string, def, maxV int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}

	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxV {
		return 0, fmt.Errorf("query parameter %s=%q: want a number from 0 to %d", name, v, maxV)
	}

	return n, nil
}

func (s *Server) clusters(w http.ResponseWriter, r *http.Request, _ Identity) {
	offset, err := intParam(r, "offset", 0, 1<<30)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())

		return
	}

	limit, err := intParam(r, "limit", 100, 1000)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())

		return
	}

	snap, err := s.model.get(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())

		return
	}

	writeJSON(w, r, snap.clusterList(filterFrom(r.URL.Query()), s.opts.Facts, s.opts.Now(), offset, limit))
}

func (s *Server) node(w http.ResponseWriter, r *http.Request, _ Identity) {
	snap, err := s.model.get(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())

		return
	}

	d, err := s.nodeDetail(r.Context(), snap, r.PathValue("cluster"), r.PathValue("node"))
	if errors.Is(err, errNoNode) {
		writeError(w, http.StatusNotFound, err.Error())

		return
	}

	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())

		return
	}

	writeJSON(w, r, d)
}

// RolloutInfo is one rollout in GET /api/v1/rollouts: the store's row
// without the plan or the lease token.
type RolloutInfo = store.Rollout

func (s *Server) rollouts(w http.ResponseWriter, r *http.Request, _ Identity) {
	rs, err := s.opts.Store.Rollouts(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())

		return
	}

	if rs == nil {
		rs = []store.Rollout{}
	}

	writeJSON(w, r, rs)
}

// rolloutID maps "latest" to "" (the store's latest).
func rolloutID(r *http.Request) string {
	if id := r.PathValue("id"); id != "latest" {
		return id
	}

	return ""
}

func (s *Server) rollout(w http.ResponseWriter, r *http.Request, _ Identity) {
	d, err := s.rolloutDetail(r.Context(), rolloutID(r))
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("rollout %q not found", r.PathValue("id")))

		return
	}

	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())

		return
	}

	writeJSON(w, r, d)
}
