-- no-transaction
-- Kept in step with migrations/postgres/0011_campaign_life.sql: the `completed`
-- status, `completed_at` and `outcomes_until`. SQLite cannot change a CHECK, so
-- `campaigns` is rebuilt, the documented way: foreign keys off (only possible outside a transaction, hence
-- the directive above), the copy in one transaction, and foreign keys on again.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE campaigns_next (
    campaign_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT NOT NULL UNIQUE,
    spec               TEXT NOT NULL,
    spec_hash          TEXT NOT NULL,
    version            INTEGER NOT NULL DEFAULT 1,
    status             TEXT NOT NULL CHECK (status IN ('active', 'paused', 'cancelled', 'finished', 'completed')),
    schedule           TEXT,
    timezone           TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_run_at        INTEGER,
    next_run_at        INTEGER,
    lease_owner        TEXT,
    lease_expires_at   INTEGER,
    tick_in_progress   INTEGER,
    done_through       INTEGER,
    pause_reason       TEXT,
    pause_detail       TEXT,
    canary_released_at INTEGER,
    completed_at       INTEGER,
    outcomes_until     INTEGER
);
INSERT INTO campaigns_next
    (campaign_id, name, spec, spec_hash, version, status, schedule, timezone, created_at, updated_at,
     last_run_at, next_run_at, lease_owner, lease_expires_at, tick_in_progress, done_through,
     pause_reason, pause_detail, canary_released_at)
    SELECT campaign_id, name, spec, spec_hash, version, status, schedule, timezone, created_at, updated_at,
     last_run_at, next_run_at, lease_owner, lease_expires_at, tick_in_progress, done_through,
     pause_reason, pause_detail, canary_released_at
    FROM campaigns;
DROP TABLE campaigns;
ALTER TABLE campaigns_next RENAME TO campaigns;
-- a notified target's not_before was left over from its last deferral; it now
-- means the next reminder's time, stamped by the next run
UPDATE campaign_targets SET not_before = NULL WHERE status = 'notified';
COMMIT;
PRAGMA foreign_keys = ON;
