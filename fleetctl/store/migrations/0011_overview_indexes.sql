-- The fleet overview (fleetctl/overview) shows a node's history across
-- rollouts: its record per rollout and its audit lines. Without these
-- indexes each node page scans every node row and every audit line.
-- +migrate Up
CREATE INDEX IF NOT EXISTS nodes_cluster_name ON nodes (rollout_id, cluster, name);
CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject, rollout_id, id);
