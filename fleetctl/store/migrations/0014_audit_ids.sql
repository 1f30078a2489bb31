-- A node's audit lines are found through the ids listed on its own rows
-- (nodes.audit_ids: its transitions; staging.audit_ids: its staging
-- lines) instead of the audit_subject index. That index took an insert
-- into a b-tree keyed by cluster/node for every transition: the keys of
-- one group commit fall on pages all over the index, each written to the
-- WAL again, which was a large share of the writer's CPU time. The lists
-- are appended in the statements that already update those rows, so they
-- add no b-tree page of their own. Lines written before this migration are
-- listed on the node's row here, as the index would have found them.
-- +migrate Up
ALTER TABLE nodes ADD COLUMN audit_ids TEXT NOT NULL DEFAULT '';
ALTER TABLE staging ADD COLUMN audit_ids TEXT NOT NULL DEFAULT '';
UPDATE nodes SET audit_ids = COALESCE((SELECT group_concat(id, ',') FROM
	(SELECT a.id FROM audit a WHERE a.subject = nodes.cluster || '/' || nodes.name AND a.rollout_id = nodes.rollout_id ORDER BY a.id)), '');
DROP INDEX IF EXISTS audit_subject;
