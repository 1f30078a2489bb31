-- The hub's machine registry (fleetctl hub). Machines are keyed by their
-- SMBIOS UUID; every write touches one machine's rows only, so a bad
-- enrollment can never lose another machine's record.
-- +migrate Up
CREATE TABLE IF NOT EXISTS hub_tokens (
	id TEXT PRIMARY KEY,
	site TEXT NOT NULL,
	hash TEXT NOT NULL UNIQUE,
	created_at INTEGER NOT NULL,
	created_by TEXT NOT NULL,
	revoked_at INTEGER NOT NULL DEFAULT 0,
	revoke_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS hub_tokens_site ON hub_tokens (site);
CREATE TABLE IF NOT EXISTS hub_machines (
	uuid TEXT PRIMARY KEY,
	site TEXT NOT NULL,
	token_id TEXT NOT NULL,
	unique_token TEXT NOT NULL DEFAULT '',
	public_key TEXT NOT NULL,
	tunnel_address TEXT NOT NULL UNIQUE,
	virtual_address TEXT NOT NULL DEFAULT '',
	endpoint TEXT NOT NULL DEFAULT '',
	transport TEXT NOT NULL,
	first_seen INTEGER NOT NULL,
	last_seen INTEGER NOT NULL,
	talos_version TEXT NOT NULL DEFAULT '',
	image_version TEXT NOT NULL DEFAULT '',
	secure_boot TEXT NOT NULL DEFAULT '',
	disk_encryption TEXT NOT NULL DEFAULT '',
	state TEXT NOT NULL,
	cluster TEXT NOT NULL DEFAULT '',
	role TEXT NOT NULL DEFAULT '',
	decided_by TEXT NOT NULL DEFAULT '',
	decided_at INTEGER NOT NULL DEFAULT 0,
	config_applied_at INTEGER NOT NULL DEFAULT 0,
	last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS hub_events (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	uuid TEXT NOT NULL,
	at INTEGER NOT NULL,
	type TEXT NOT NULL,
	event_id TEXT NOT NULL DEFAULT '',
	payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS hub_events_uuid ON hub_events (uuid, id);
CREATE TABLE IF NOT EXISTS hub_logs (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	uuid TEXT NOT NULL,
	at INTEGER NOT NULL,
	line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS hub_logs_uuid ON hub_logs (uuid, id);
CREATE TABLE IF NOT EXISTS hub_keys (
	name TEXT PRIMARY KEY,
	private_key TEXT NOT NULL,
	created_at INTEGER NOT NULL
);
