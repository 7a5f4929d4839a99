-- Kept in step with migrations/postgres/0003_shared_user_state.sql: the access
-- token, the token version and the refresh lease on `users`; `counted_at` and the
-- `orphaned` status on `verification_sessions` (SQLite cannot change a CHECK, so the
-- table is rebuilt; nothing references it).
ALTER TABLE users ADD COLUMN access_token_enc BLOB;
ALTER TABLE users ADD COLUMN access_token_key_id TEXT;
ALTER TABLE users ADD COLUMN access_token_expires_at INTEGER;
ALTER TABLE users ADD COLUMN access_token_fresh_until INTEGER;
ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN token_lease_owner TEXT;
ALTER TABLE users ADD COLUMN token_lease_until INTEGER;

CREATE TABLE verification_sessions_next (
    session_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    campaign_id INTEGER REFERENCES campaigns (campaign_id),
    step        INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'issued', 'delivered', 'delivery_failed', 'api_failed', 'unknown', 'orphaned')),
    reserved_at INTEGER NOT NULL,
    issued_at   INTEGER,
    expires_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    counted_at  INTEGER NOT NULL
);
INSERT INTO verification_sessions_next
    (session_id, user_id, campaign_id, step, status, reserved_at, issued_at, expires_at, updated_at, counted_at)
    SELECT session_id, user_id, campaign_id, step, status, reserved_at, issued_at, expires_at, updated_at, reserved_at
    FROM verification_sessions;
DROP TABLE verification_sessions;
ALTER TABLE verification_sessions_next RENAME TO verification_sessions;
CREATE INDEX verification_sessions_by_user ON verification_sessions (user_id, reserved_at);
CREATE INDEX verification_sessions_by_campaign ON verification_sessions (campaign_id, user_id, step);
