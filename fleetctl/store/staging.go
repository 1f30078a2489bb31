package store

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// Staging states of a node (plan staging): what the stager last knew of
// the image pull it asked the node for.
const (
	StagePending = "pending" // queued: waiting for its download window or a slot on the site's link
	StagePulling = "pulling" // the node was asked to pull (Reason: the last failed attempt, if any)
	StageStaged  = "staged"  // the node holds the image
	StageFailed  = "failed"  // the pull did not succeed within the staging timeout (Reason says why)
)

// Staging is one node's staging record.
type Staging struct {
	Node    int    `json:"node"`
	Subject string `json:"subject,omitempty"` // cluster/node, for the audit log
	State   string `json:"state"`
	Reason  string `json:"reason,omitempty"`
	// Bytes is the image's size on the node, when the node reports it (0: unknown).
	Bytes int64 `json:"bytes,omitempty"`
	// Attempts counts the pulls the node was asked for (one "pulling"
	// record each).
	Attempts  int       `json:"attempts"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// RecordStaging writes staging records under this lease (checked in the
// same transaction, like every state write), each with its audit line.
// Several records share one transaction: the stager queues every node at
// start in one write.
func (l *Lease) RecordStaging(ctx context.Context, actor string, recs ...Staging) error {
	if len(recs) == 0 {
		return nil
	}

	return l.guarded(ctx, func(tx *wtx) error {
		at := now()

		for _, r := range recs {
			detail := r.Reason
			if r.Bytes > 0 {
				detail = fmt.Sprintf("bytes=%d %s", r.Bytes, detail)
			}

			res, err := tx.Exec(`INSERT INTO audit (at, actor, rollout_id, action, subject, detail) VALUES (?,?,?,?,?,?)`,
				at, actor, l.rollout, "staging."+r.State, r.Subject, detail)
			if err != nil {
				return fmt.Errorf("writing audit log: %w", err)
			}

			// The staging row lists its audit lines' ids (the fleet
			// overview's node history reads them by id).
			aid, err := res.LastInsertId()
			if err != nil {
				return fmt.Errorf("writing audit log: %w", err)
			}

			if _, err := tx.Exec(`INSERT INTO staging (rollout_id, node, state, reason, bytes, attempts, updated_at, audit_ids) VALUES (?,?,?,?,?,?,?,?)
				ON CONFLICT (rollout_id, node) DO UPDATE SET state = excluded.state, reason = excluded.reason,
				bytes = CASE WHEN excluded.bytes = 0 THEN staging.bytes ELSE excluded.bytes END,
				attempts = staging.attempts + excluded.attempts, updated_at = excluded.updated_at,
				audit_ids = CASE WHEN staging.audit_ids = '' THEN excluded.audit_ids ELSE staging.audit_ids || ',' || excluded.audit_ids END`,
				l.rollout, r.Node, r.State, r.Reason, r.Bytes, boolInt(r.State == StagePulling), at, strconv.FormatInt(aid, 10)); err != nil {
				return fmt.Errorf("recording staging of %s: %w", r.Subject, err)
			}
		}

		return nil
	})
}

// Staging reads the staging records of a rollout by node id (none when it
// does not stage or the stager has not started).
func (s *Store) Staging(ctx context.Context, id string) (map[int]Staging, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT s.node, n.cluster || '/' || n.name, s.state, s.reason, s.bytes, s.attempts, s.updated_at
		FROM staging s JOIN nodes n ON n.rollout_id = s.rollout_id AND n.id = s.node WHERE s.rollout_id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("reading staging: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	out := map[int]Staging{}

	for rows.Next() {
		var (
			r  Staging
			at int64
		)

		if err := rows.Scan(&r.Node, &r.Subject, &r.State, &r.Reason, &r.Bytes, &r.Attempts, &at); err != nil {
			return nil, fmt.Errorf("reading staging: %w", err)
		}

		r.UpdatedAt = t(at)
		out[r.Node] = r
	}

	return out, rows.Err()
}

// SiteStaging is a site's staging progress.
type SiteStaging struct {
	Site    string `json:"site"`
	Nodes   int    `json:"nodes"` // nodes with a staging record
	Staged  int    `json:"staged"`
	Pulling int    `json:"pulling"`
	Failed  int    `json:"failed"`
	Pending int    `json:"pending"`
	// Bytes sums the image sizes the site's staged nodes reported.
	Bytes    int64            `json:"bytes,omitempty"`
	Failures []StagingFailure `json:"failures,omitempty"`
}

// StagingFailure is a node whose pull failed, and why.
type StagingFailure struct {
	Node   string `json:"node"` // cluster/node
	Reason string `json:"reason"`
}

// StagingSummary counts the staging records per site (sites in name order;
// failures in node order). A rollout that does not stage has none.
func (s *Store) StagingSummary(ctx context.Context, id string) ([]SiteStaging, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT n.site, n.cluster || '/' || n.name, s.state, s.reason, s.bytes
		FROM staging s JOIN nodes n ON n.rollout_id = s.rollout_id AND n.id = s.node WHERE s.rollout_id = ? ORDER BY s.node`, id)
	if err != nil {
		return nil, fmt.Errorf("reading staging: %w", err)
	}
	defer rows.Close() //nolint:errcheck

	bySite := map[string]*SiteStaging{}

	for rows.Next() {
		var (
			site, subject, state, reason string
			bytes                        int64
		)

		if err := rows.Scan(&site, &subject, &state, &reason, &bytes); err != nil {
			return nil, fmt.Errorf("reading staging: %w", err)
		}

		ss := bySite[site]
		if ss == nil {
			ss = &SiteStaging{Site: site}
			bySite[site] = ss
		}

		ss.Nodes++

		switch state {
		case StageStaged:
			ss.Staged++
			ss.Bytes += bytes
		case StagePulling:
			ss.Pulling++
		case StageFailed:
			ss.Failed++
			ss.Failures = append(ss.Failures, StagingFailure{Node: subject, Reason: reason})
		default:
			ss.Pending++
		}
	}

	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading staging: %w", err)
	}

	out := make([]SiteStaging, 0, len(bySite))
	for _, ss := range bySite {
		out = append(out, *ss)
	}

	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })

	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}

	return 0
}
