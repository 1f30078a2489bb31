package overview

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Identity is who makes a request.
type Identity struct {
	Name   string `json:"name"`
	Role   string `json:"role"`
	Method string `json:"method"` // token, certificate
}

// actor is how the audit log names an identity.
func (id Identity) actor() string { return id.Name + " (overview, " + id.Method + ", " + id.Role + ")" }

const (
	sessionCookie = "fleet_session"
	sessionTTL    = 12 * time.Hour
)

type session struct {
	id      Identity
	expires time.Time
}

// auth resolves identities: a verified client certificate, a bearer token,
// or a session cookie issued by a token login.
type auth struct {
	users []User

	mu       sync.Mutex
	sessions map[string]session // key: sha256 of the cookie value
}

func newAuth(users []User) *auth { return &auth{users: users, sessions: map[string]session{}} }

func hashHex(s string) string {
	sum := sha256.Sum256([]byte(s))

	return hex.EncodeToString(sum[:])
}

// byToken finds the user holding token (constant time per user).
func (a *auth) byToken(token string) (Identity, bool) {
	if token == "" {
		return Identity{}, false
	}

	h := hashHex(token)

	for _, u := range a.users {
		if u.TokenSHA256 != "" && subtle.ConstantTimeCompare([]byte(h), []byte(strings.ToLower(u.TokenSHA256))) == 1 {
			return Identity{Name: u.Name, Role: u.Role, Method: "token"}, true
		}
	}

	return Identity{}, false
}

// identify returns the caller's identity; ok is false when there is none.
func (a *auth) identify(r *http.Request) (Identity, bool) {
	// The TLS layer verified the chain against tls.clientCA already
	// (VerifyClientCertIfGiven); only the name is mapped here.
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
		for _, u := range a.users {
			if u.CertCommonName != "" && u.CertCommonName == cn {
				return Identity{Name: u.Name, Role: u.Role, Method: "certificate"}, true
			}
		}
	}

	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return a.byToken(strings.TrimSpace(tok))
	}

	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		defer a.mu.Unlock()

		k := hashHex(c.Value)
		if s, ok := a.sessions[k]; ok {
			if time.Now().Before(s.expires) {
				return s.id, true
			}

			delete(a.sessions, k)
		}
	}

	return Identity{}, false
}

// newSession returns a cookie value for id; only its hash is kept.
func (a *auth) newSession(id Identity) string {
	b := make([]byte, 32)
	rand.Read(b) //nolint:errcheck // crypto/rand.Read never fails

	v := hex.EncodeToString(b)

	a.mu.Lock()
	defer a.mu.Unlock()

	now := time.Now()
	for k, s := range a.sessions {
		if now.After(s.expires) {
			delete(a.sessions, k)
		}
	}

	a.sessions[hashHex(v)] = session{id: id, expires: now.Add(sessionTTL)}

	return v
}

func (a *auth) endSession(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		delete(a.sessions, hashHex(c.Value))
		a.mu.Unlock()
	}
}
