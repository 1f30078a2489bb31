package registry

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// tokenPrefix marks labfleet join tokens so a pasted token is recognisable
// (and secret scanners can find one leaked into a repository).
const tokenPrefix = "lfj_"

// Token is a join token's record. The secret itself is never stored: only
// its SHA-256, so a copy of the database does not let anyone enroll.
type Token struct {
	ID           string    `json:"id"`
	Site         string    `json:"site"`
	CreatedAt    time.Time `json:"createdAt"`
	CreatedBy    string    `json:"createdBy"`
	RevokedAt    time.Time `json:"revokedAt,omitzero"`
	RevokeReason string    `json:"revokeReason,omitempty"`
}

// Revoked tells whether the token may no longer be used.
func (t Token) Revoked() bool { return !t.RevokedAt.IsZero() }

// hashToken is SHA-256: join tokens are 160-bit random secrets, so a slow
// password hash buys nothing and would slow every enrollment.
func hashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))

	return hex.EncodeToString(sum[:])
}

// CreateToken makes a join token for a site. The secret is returned once
// and never again.
func (r *Registry) CreateToken(ctx context.Context, site, actor string) (string, Token, error) {
	if site == "" {
		return "", Token{}, errors.New("creating a join token: the site is required")
	}

	t := Token{ID: "jt-" + randomID(8), Site: site, CreatedAt: r.now().UTC(), CreatedBy: actor}
	secret := tokenPrefix + randomID(32)

	_, err := r.db.ExecContext(ctx, `INSERT INTO hub_tokens (id, site, hash, created_at, created_by) VALUES (?,?,?,?,?)`,
		t.ID, t.Site, hashToken(secret), t.CreatedAt.UnixNano(), actor)
	if err != nil {
		return "", Token{}, fmt.Errorf("storing join token for site %s: %w", site, err)
	}

	return secret, t, nil
}

const tokenCols = `id, site, created_at, created_by, revoked_at, revoke_reason`

func scanToken(s scanner) (Token, error) {
	var (
		t                Token
		created, revoked int64
	)

	if err := s.Scan(&t.ID, &t.Site, &created, &t.CreatedBy, &revoked, &t.RevokeReason); err != nil {
		return Token{}, err
	}

	t.CreatedAt = fromNanos(created)
	t.RevokedAt = fromNanos(revoked)

	return t, nil
}

// Tokens lists every join token (never the secrets), by site then age.
func (r *Registry) Tokens(ctx context.Context) ([]Token, error) {
	rows, err := r.db.QueryContext(ctx, `SELECT `+tokenCols+` FROM hub_tokens ORDER BY site, created_at`)
	if err != nil {
		return nil, fmt.Errorf("listing join tokens: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	var out []Token

	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("listing join tokens: %w", err)
		}

		out = append(out, t)
	}

	return out, rows.Err()
}

// RevokeToken revokes a token by ID. Machines that enrolled with it keep
// their links (a token only lets a machine be seen); they are refused when
// they next provision with it (every boot).
func (r *Registry) RevokeToken(ctx context.Context, id, reason string) error {
	if reason == "" {
		reason = "revoked"
	}

	res, err := r.db.ExecContext(ctx, `UPDATE hub_tokens SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at = 0`,
		r.now().UnixNano(), reason, id)
	if err != nil {
		return fmt.Errorf("revoking join token %s: %w", id, err)
	}

	if n, _ := res.RowsAffected(); n == 0 {
		t, err := scanToken(r.db.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM hub_tokens WHERE id = ?`, id))
		if err != nil {
			return fmt.Errorf("join token %s: %w (see 'fleetctl hub token ls')", id, ErrNotFound)
		}

		if t.Revoked() {
			return nil // revoking twice is what the operator wanted
		}
	}

	return nil
}

// RotateToken creates a new token for a site and revokes the site's other
// live tokens in the same transaction: there is never a moment with no
// valid token, and never one with both.
func (r *Registry) RotateToken(ctx context.Context, site, actor string) (string, Token, []string, error) {
	if site == "" {
		return "", Token{}, nil, errors.New("rotating join tokens: the site is required")
	}

	t := Token{ID: "jt-" + randomID(8), Site: site, CreatedAt: r.now().UTC(), CreatedBy: actor}
	secret := tokenPrefix + randomID(32)

	var revoked []string

	err := r.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id FROM hub_tokens WHERE site = ? AND revoked_at = 0`, site)
		if err != nil {
			return fmt.Errorf("listing tokens of site %s: %w", site, err)
		}

		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close() //nolint:errcheck

				return fmt.Errorf("listing tokens of site %s: %w", site, err)
			}

			revoked = append(revoked, id)
		}

		rows.Close() //nolint:errcheck

		if _, err := tx.ExecContext(ctx, `UPDATE hub_tokens SET revoked_at = ?, revoke_reason = ? WHERE site = ? AND revoked_at = 0`,
			t.CreatedAt.UnixNano(), "rotated to "+t.ID, site); err != nil {
			return fmt.Errorf("revoking tokens of site %s: %w", site, err)
		}

		if _, err := tx.ExecContext(ctx, `INSERT INTO hub_tokens (id, site, hash, created_at, created_by) VALUES (?,?,?,?,?)`,
			t.ID, t.Site, hashToken(secret), t.CreatedAt.UnixNano(), actor); err != nil {
			return fmt.Errorf("storing join token for site %s: %w", site, err)
		}

		return nil
	})
	if err != nil {
		return "", Token{}, nil, err
	}

	return secret, t, revoked, nil
}

// CheckToken finds (by the secret's hash: a lookup of a 160-bit random
// secret's hash leaks nothing useful through timing) the live token whose secret this is. The error never
// contains the secret; for a revoked token it names the token ID, its site
// and why it was revoked.
func (r *Registry) CheckToken(ctx context.Context, secret string) (Token, error) {
	if secret == "" {
		return Token{}, fmt.Errorf("%w: the machine sent no join token (set jointoken in its SideroLink API URL)", ErrTokenUnknown)
	}

	h := hashToken(secret)

	t, err := scanToken(r.db.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM hub_tokens WHERE hash = ?`, h))
	if errors.Is(err, sql.ErrNoRows) {
		hint := ""
		if !strings.HasPrefix(secret, tokenPrefix) {
			hint = " (not a labfleet join token)"
		}

		return Token{}, fmt.Errorf("%w%s", ErrTokenUnknown, hint)
	}

	if err != nil {
		return Token{}, fmt.Errorf("checking join token: %w", err)
	}

	if t.Revoked() {
		return t, fmt.Errorf("%w: token %s of site %s (%s)", ErrTokenRevoked, t.ID, t.Site, t.RevokeReason)
	}

	return t, nil
}
