-- Staging progress (plan staging, issue 15): per node, what the stager
-- last knew of the image pull it asked for, so `rollout status` can show it
-- from any process and a resumed rollout need not pull again what a node
-- already holds (it asks the node first). Written under the executor's
-- lease like every other state row.
-- +migrate Up
CREATE TABLE IF NOT EXISTS staging (
	rollout_id TEXT NOT NULL,
	node INTEGER NOT NULL,
	state TEXT NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	bytes INTEGER NOT NULL DEFAULT 0,
	attempts INTEGER NOT NULL DEFAULT 0,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (rollout_id, node)
);
