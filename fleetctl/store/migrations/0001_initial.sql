-- The schema of fleetctl before schema versioning. IF NOT EXISTS lets
-- databases created by those releases take this migration as a no-op.
-- +migrate Up
CREATE TABLE IF NOT EXISTS rollouts (
	id TEXT PRIMARY KEY,
	name TEXT NOT NULL,
	image TEXT NOT NULL,
	version TEXT NOT NULL,
	plan TEXT NOT NULL,
	driver TEXT NOT NULL DEFAULT '',
	state TEXT NOT NULL,
	desired TEXT NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	created_by TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	started_at INTEGER NOT NULL DEFAULT 0,
	lease_host TEXT NOT NULL DEFAULT '',
	lease_pid INTEGER NOT NULL DEFAULT 0,
	lease_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sites (
	rollout_id TEXT NOT NULL,
	name TEXT NOT NULL,
	timezone TEXT NOT NULL,
	windows TEXT NOT NULL,
	PRIMARY KEY (rollout_id, name)
);
CREATE TABLE IF NOT EXISTS waves (
	rollout_id TEXT NOT NULL,
	idx INTEGER NOT NULL,
	name TEXT NOT NULL,
	state TEXT NOT NULL,
	clusters INTEGER NOT NULL,
	nodes INTEGER NOT NULL,
	max_failures INTEGER NOT NULL,
	concurrency INTEGER NOT NULL,
	started_at INTEGER NOT NULL DEFAULT 0,
	finished_at INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (rollout_id, idx)
);
CREATE TABLE IF NOT EXISTS nodes (
	rollout_id TEXT NOT NULL,
	id INTEGER NOT NULL,
	wave INTEGER NOT NULL,
	cluster TEXT NOT NULL,
	name TEXT NOT NULL,
	endpoint TEXT NOT NULL,
	role TEXT NOT NULL,
	site TEXT NOT NULL,
	region TEXT NOT NULL,
	bandwidth TEXT NOT NULL,
	talosconfig TEXT NOT NULL,
	state TEXT NOT NULL,
	from_version TEXT NOT NULL DEFAULT '',
	error TEXT NOT NULL DEFAULT '',
	rolled_back INTEGER NOT NULL DEFAULT 0,
	upgrade_calls INTEGER NOT NULL DEFAULT 0,
	updated_at INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (rollout_id, id)
);
CREATE TABLE IF NOT EXISTS audit (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	at INTEGER NOT NULL,
	actor TEXT NOT NULL,
	rollout_id TEXT NOT NULL,
	action TEXT NOT NULL,
	subject TEXT NOT NULL,
	detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_rollout ON audit (rollout_id, id);
