-- Every state write of an executor checks this token in its own
-- transaction, so a process that lost the lease stops at its next write.
-- +migrate Up
ALTER TABLE rollouts ADD COLUMN lease_token TEXT NOT NULL DEFAULT '';
