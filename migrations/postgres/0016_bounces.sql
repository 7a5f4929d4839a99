-- Bounces, complaints and a fallback channel (issue 27). Kept in step with
-- migrations/sqlite/0016_bounces.sql.

-- A hard bounce (or three soft ones in 7 days) makes the address undeliverable:
-- every later campaign skips the user by email until an import or a sync brings
-- a different address. The reason is the status code and the remote server's
-- words, scrubbed of any address.
ALTER TABLE users ADD COLUMN email_undeliverable_at BIGINT;
ALTER TABLE users ADD COLUMN email_undeliverable_reason TEXT;
-- the recipient reported a message as abuse (delivery.on_complaint decides)
ALTER TABLE users ADD COLUMN complained_at BIGINT;
-- Postmark names only the address: its bounce finds the user by it
CREATE INDEX users_by_email ON users (lower(email));

-- the funnel's `bounced` and `fallback sent` stages, and the report's columns
ALTER TABLE campaign_targets ADD COLUMN bounced_at BIGINT;
ALTER TABLE campaign_targets ADD COLUMN bounce_diagnostic TEXT;
ALTER TABLE campaign_targets ADD COLUMN fallback_sent_at BIGINT;

-- the ledger row of a message that bounced (it keeps counting: the session exists)
ALTER TABLE verification_sessions DROP CONSTRAINT verification_sessions_status_check;
ALTER TABLE verification_sessions ADD CONSTRAINT verification_sessions_status_check
    CHECK (status IN ('reserved', 'issued', 'delivered', 'delivery_failed', 'api_failed', 'unknown', 'orphaned', 'bounced'));

-- Every bounce report matched to a message, once per (source, dedupe_id): what
-- makes a report delivered twice count once, and what the soft-bounce rule counts.
CREATE TABLE bounces (
    bounce_id   BIGSERIAL PRIMARY KEY,
    source      TEXT NOT NULL CHECK (source IN ('ses', 'sendgrid', 'postmark', 'mailbox')),
    dedupe_id   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint', 'unknown')),
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    campaign_id BIGINT REFERENCES campaigns (campaign_id),
    session_id  BIGINT,
    link_id     BIGINT,
    status_code TEXT,
    diagnostic  TEXT,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (source, dedupe_id)
);
CREATE INDEX bounces_by_user ON bounces (user_id, received_at);
CREATE INDEX bounces_by_campaign ON bounces (campaign_id, kind);
