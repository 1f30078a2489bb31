package overview

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Roles.
const (
	RoleReadOnly = "read-only" // sees everything on the page, changes nothing
	RoleOperator = "operator"  // may also pause, resume and abort rollouts
)

// Config is the overview's access configuration (a YAML file; the hub embeds
// the same struct in its own config). It holds no secret: tokens are stored
// as their SHA-256, so a leaked config does not let anyone log in.
type Config struct {
	// TLS serves the page over HTTPS. Required unless the listen address is a
	// loopback address (a development setup on one machine).
	TLS *TLSConfig `yaml:"tls,omitempty"`
	// Users are the people (or tools) allowed in, each with one role.
	Users []User `yaml:"users"`

	source string
}

// TLSConfig names the server certificate and the CA operator client certificates are checked against.
type TLSConfig struct {
	// Cert and Key are the server certificate and its key (PEM files).
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ClientCA (PEM) signs operator client certificates; empty: token login only.
	ClientCA string `yaml:"clientCA,omitempty"`
}

// User is one identity: a token, a client certificate, or both.
type User struct {
	// Name is who the audit log names ("alice").
	Name string `yaml:"name"`
	// Role is operator or read-only.
	Role string `yaml:"role"`
	// TokenSHA256 is the hex SHA-256 of the user's login token
	// (`printf %s "$TOKEN" | sha256sum`). The token itself is never stored.
	TokenSHA256 string `yaml:"tokenSHA256,omitempty"`
	// CertCommonName maps a client certificate (verified against tls.clientCA)
	// with this subject common name to the user.
	CertCommonName string `yaml:"certCommonName,omitempty"`
}

// LoadConfig reads and validates a config file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading overview config: %w", err)
	}

	var c Config

	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)

	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}

	c.source = path
	dir := filepath.Dir(path)

	if c.TLS != nil {
		for _, p := range []*string{&c.TLS.Cert, &c.TLS.Key, &c.TLS.ClientCA} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(dir, *p)
			}
		}
	}

	if err := c.Validate(); err != nil {
		return nil, err
	}

	return &c, nil
}

// Validate checks every user and names file, entry and field of each problem.
func (c *Config) Validate() error {
	src := c.source
	if src == "" {
		src = "overview config"
	}

	var errs []error

	fail := func(entry, field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s: %s: %s", src, entry, field, fmt.Sprintf(format, args...)))
	}

	if len(c.Users) == 0 {
		errs = append(errs, fmt.Errorf("%s: users: at least one user is required (nobody could log in)", src))
	}

	names, tokens, cns := map[string]bool{}, map[string]bool{}, map[string]bool{}

	for i, u := range c.Users {
		entry := fmt.Sprintf("users[%d]", i)
		if u.Name != "" {
			entry = fmt.Sprintf("users[%d] (%s)", i, u.Name)
		}

		switch {
		case u.Name == "":
			fail(entry, "name", "required (the audit log names it)")
		case names[u.Name]:
			fail(entry, "name", "%q appears twice", u.Name)
		}

		names[u.Name] = true

		if u.Role != RoleOperator && u.Role != RoleReadOnly {
			fail(entry, "role", "%q: want %s or %s", u.Role, RoleOperator, RoleReadOnly)
		}

		if u.TokenSHA256 == "" && u.CertCommonName == "" {
			fail(entry, "tokenSHA256", "give tokenSHA256 or certCommonName (the user could not log in)")
		}

		if u.TokenSHA256 != "" {
			b, err := hex.DecodeString(u.TokenSHA256)
			switch {
			case err != nil || len(b) != 32:
				fail(entry, "tokenSHA256", "want 64 hex digits, the SHA-256 of the token (printf %%s \"$TOKEN\" | sha256sum), not the token itself")
			case tokens[strings.ToLower(u.TokenSHA256)]:
				fail(entry, "tokenSHA256", "the same token is given to two users")
			}

			tokens[strings.ToLower(u.TokenSHA256)] = true
		}

		if u.CertCommonName != "" {
			if cns[u.CertCommonName] {
				fail(entry, "certCommonName", "%q is given to two users", u.CertCommonName)
			}

			cns[u.CertCommonName] = true

			if c.TLS == nil || c.TLS.ClientCA == "" {
				fail(entry, "certCommonName", "needs tls.clientCA (the CA client certificates are checked against)")
			}
		}
	}

	if c.TLS != nil && (c.TLS.Cert == "" || c.TLS.Key == "") {
		errs = append(errs, fmt.Errorf("%s: tls: cert and key are both required", src))
	}

	return errors.Join(errs...)
}
