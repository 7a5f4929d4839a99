-- When each user's verification state was last confirmed, and by what (issue 29):
-- a user confirmed within a campaign's fresh_state_max_age is not asked
-- `GET /v1/user` again before the session. Kept in step with
-- migrations/postgres/0015_state_confirmed.sql.
ALTER TABLE users ADD COLUMN state_confirmed_at BIGINT;
-- api | webhook | sync | import
ALTER TABLE users ADD COLUMN state_source TEXT;
-- what the last sync already knew counts as confirmed by a sync; nothing else is
UPDATE users SET state_confirmed_at = synced_at, state_source = 'sync' WHERE synced_at IS NOT NULL;

-- the campaign's fresh_state_max_age when the link was sent (NULL: none set), for
-- the click, which trusts a fresh state the same way
ALTER TABLE verification_links ADD COLUMN fresh_state_max_age_ms BIGINT;

-- The state feeds' last signs of life: a signed webhook accepted, a `users sync`
-- finished. A webhook moves its row at most once a minute (see store::feeds).
CREATE TABLE state_feeds (
    feed    TEXT PRIMARY KEY CHECK (feed IN ('webhook', 'sync')),
    last_at BIGINT NOT NULL
);
INSERT INTO state_feeds (feed, last_at) VALUES ('webhook', 0), ('sync', 0);
