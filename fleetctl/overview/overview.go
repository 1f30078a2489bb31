// Package overview serves the fleet overview: a web page and the JSON API
// behind it showing every region, site, cluster and node, node histories, and
// a rollout's progress live (server-sent events), with pause / resume / abort
// for operators. It reads the rollout store (and, once mounted into the hub,
// the nodes' own reports through FactSource).
//
// Access: every request needs an identity (a client certificate verified
// against the configured CA, a bearer token, or the session cookie of a token
// login). Roles: read-only sees everything; operator may also act. Actions go
// through the same store and engine calls as `fleetctl rollout pause|resume|abort`
// and are written to the store's audit log with the identity's name. No
// token, key or credential path is ever part of a page or an API answer.
package overview

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/labfleet/labfleet/fleetctl/inventory"
	"github.com/labfleet/labfleet/fleetctl/store"
)

// Executor continues a rollout in the background (engine.Resume with actor
// as Options.Actor): used by resume, and by abort when no process executes
// the rollout (the engine then finishes in-flight nodes and marks it
// aborted). It returns once the execution started or could not start.
type Executor func(ctx context.Context, rolloutID, actor string) error

// Options configure New.
type Options struct {
	// Store is the rollout database, opened writable (actions write to it). Required.
	Store *store.Store
	// Config lists users and roles. Required.
	Config *Config
	// Inventory adds clusters that no rollout selected yet (optional).
	Inventory *inventory.Inventory
	// Facts answers what only nodes know (version, Secure Boot, encryption,
	// last seen, events, kernel log); the hub provides it. Optional.
	Facts FactSource
	// Executor runs resumes; nil: resume is refused with a hint to use the CLI.
	Executor Executor
	// Logger receives access refusals and action outcomes; nil discards.
	Logger *slog.Logger
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// Poll is how often live pages get a new rollout status (default 1s).
	Poll time.Duration
	// Secure marks the session cookie Secure (set when serving TLS).
	Secure bool
}

// Server is the overview http.Handler; Close stops its live-update loop.
type Server struct {
	opts  Options
	auth  *auth
	model *model
	hub   *broadcaster
	mux   *http.ServeMux

	schedCache sync.Map // rollout id -> map[string]*window.Schedule
}

// New builds the handler.
func New(opts Options) (*Server, error) {
	if opts.Store == nil || opts.Config == nil {
		return nil, errors.New("overview: Store and Config are required")
	}

	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}

	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	if opts.Now == nil {
		opts.Now = time.Now
	}

	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}

	s := &Server{opts: opts, auth: newAuth(opts.Config.Users), model: newModel(opts.Store, opts.Inventory)}
	s.hub = newBroadcaster(s.statusEvent, opts.Poll)
	s.routes()

	return s, nil
}

// Close stops the live-update loop.
func (s *Server) Close() { s.hub.close() }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
	s.mux.ServeHTTP(w, r)
}
