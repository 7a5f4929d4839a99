-- Kept in step with migrations/postgres/0016_bounces.sql (issue 27). SQLite cannot
-- change a CHECK, so the ledger is rebuilt to allow `bounced`; nothing references it.
ALTER TABLE users ADD COLUMN email_undeliverable_at INTEGER;
ALTER TABLE users ADD COLUMN email_undeliverable_reason TEXT;
ALTER TABLE users ADD COLUMN complained_at INTEGER;
CREATE INDEX users_by_email ON users (lower(email));

ALTER TABLE campaign_targets ADD COLUMN bounced_at INTEGER;
ALTER TABLE campaign_targets ADD COLUMN bounce_diagnostic TEXT;
ALTER TABLE campaign_targets ADD COLUMN fallback_sent_at INTEGER;

CREATE TABLE verification_sessions_next (
    session_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    campaign_id INTEGER REFERENCES campaigns (campaign_id),
    step        INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'issued', 'delivered', 'delivery_failed', 'api_failed', 'unknown', 'orphaned', 'bounced')),
    reserved_at INTEGER NOT NULL,
    issued_at   INTEGER,
    expires_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    counted_at  INTEGER NOT NULL,
    link_id     INTEGER
);
INSERT INTO verification_sessions_next
    (session_id, user_id, campaign_id, step, status, reserved_at, issued_at, expires_at, updated_at, counted_at, link_id)
    SELECT session_id, user_id, campaign_id, step, status, reserved_at, issued_at, expires_at, updated_at, counted_at, link_id
    FROM verification_sessions;
DROP TABLE verification_sessions;
ALTER TABLE verification_sessions_next RENAME TO verification_sessions;
CREATE INDEX verification_sessions_by_user ON verification_sessions (user_id, reserved_at);
CREATE INDEX verification_sessions_by_campaign ON verification_sessions (campaign_id, user_id, step);

CREATE TABLE bounces (
    bounce_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL CHECK (source IN ('ses', 'sendgrid', 'postmark', 'mailbox')),
    dedupe_id   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint', 'unknown')),
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    campaign_id INTEGER REFERENCES campaigns (campaign_id),
    session_id  INTEGER,
    link_id     INTEGER,
    status_code TEXT,
    diagnostic  TEXT,
    occurred_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (source, dedupe_id)
);
CREATE INDEX bounces_by_user ON bounces (user_id, received_at);
CREATE INDEX bounces_by_campaign ON bounces (campaign_id, kind);
