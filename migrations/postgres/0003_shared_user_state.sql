-- Per-user state shared by every process on one database (issue 13).
--
-- users: the access token is kept too (sealed like the refresh token, the user id
-- and "access" as associated data), so that a second run, a reminder or a sync
-- within its lifetime makes no refresh call; `token_version` changes with every
-- refresh token written, so that a refused token marks consent lost only while it
-- is still the stored one; `token_lease_*` is the one-refresh-at-a-time lease.
ALTER TABLE users ADD COLUMN access_token_enc BYTEA;
ALTER TABLE users ADD COLUMN access_token_key_id TEXT;
ALTER TABLE users ADD COLUMN access_token_expires_at BIGINT;
ALTER TABLE users ADD COLUMN access_token_fresh_until BIGINT;
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN token_lease_owner TEXT;
ALTER TABLE users ADD COLUMN token_lease_until BIGINT;

-- verification_sessions: `counted_at` is the instant the daily cap counts a session
-- from: the API's answer plus the expiry margin (the reservation's time until the
-- API answers), never earlier than the API's own count. `orphaned`: the API issued
-- the session to a worker that had lost its claim; the URL was dropped unsent, and
-- the row keeps counting.
ALTER TABLE verification_sessions ADD COLUMN counted_at BIGINT;
UPDATE verification_sessions SET counted_at = reserved_at;
ALTER TABLE verification_sessions ALTER COLUMN counted_at SET NOT NULL;
ALTER TABLE verification_sessions DROP CONSTRAINT verification_sessions_status_check;
ALTER TABLE verification_sessions ADD CONSTRAINT verification_sessions_status_check
    CHECK (status IN ('reserved', 'issued', 'delivered', 'delivery_failed', 'api_failed', 'unknown', 'orphaned'));
