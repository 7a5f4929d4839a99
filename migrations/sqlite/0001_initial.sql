-- reverify schema, SQLite flavour. Keep in step with migrations/postgres.
-- Every time is INTEGER Unix milliseconds (UTC): one binding for both engines,
-- and the worker's injected clock, never the database's, decides what "now" is.

CREATE TABLE users (
    user_id              TEXT PRIMARY KEY,
    email                TEXT NOT NULL,
    first_name           TEXT,
    last_name            TEXT,
    locale               TEXT,
    timezone             TEXT,
    region               TEXT NOT NULL CHECK (region IN ('intl', 'us')),
    country              TEXT,
    verification_state   TEXT NOT NULL CHECK (verification_state IN ('UNVERIFIED', 'PENDING', 'VERIFIED', 'REJECTED')),
    state_changed_at     INTEGER,
    rejected_at          INTEGER,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_failure_at      INTEGER,
    -- nonce || ciphertext of the refresh token; the user id is the AEAD's associated data
    refresh_token_enc    BLOB,
    token_key_id         TEXT,
    -- set when the refresh token was refused (invalid_grant): the user must consent again
    consent_required_at  INTEGER,
    -- tags as ',a,b,' so that a tag filter is a portable LIKE '%,tag,%'
    tags                 TEXT NOT NULL DEFAULT '',
    signed_up_at         INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    synced_at            INTEGER
);
CREATE INDEX users_by_state ON users (verification_state, region);

CREATE TABLE campaigns (
    campaign_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL UNIQUE,
    spec             TEXT NOT NULL,
    spec_hash        TEXT NOT NULL,
    version          INTEGER NOT NULL DEFAULT 1,
    status           TEXT NOT NULL CHECK (status IN ('active', 'paused', 'cancelled', 'finished')),
    schedule         TEXT,
    timezone         TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_run_at      INTEGER,
    next_run_at      INTEGER,
    -- per-campaign run lease: one run of a campaign at a time
    lease_owner      TEXT,
    lease_expires_at INTEGER
);

CREATE TABLE campaign_runs (
    run_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id INTEGER NOT NULL REFERENCES campaigns (campaign_id),
    worker_id   TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'finished', 'interrupted', 'failed')),
    error       TEXT,
    targeted    INTEGER NOT NULL DEFAULT 0,
    notified    INTEGER NOT NULL DEFAULT 0,
    skipped     INTEGER NOT NULL DEFAULT 0,
    deferred    INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX campaign_runs_by_campaign ON campaign_runs (campaign_id, run_id);

-- No foreign keys here, on purpose: targeting inserts a million rows in one
-- statement, and Postgres checks a foreign key with a trigger per row (most of the
-- time of targeting 1,000,000 users, issue 8). Rows come only from `users` (never
-- deleted) for a campaign checked once by Store::target_add_matching.
CREATE TABLE campaign_targets (
    campaign_id      INTEGER NOT NULL,
    user_id          TEXT NOT NULL,
    -- 0 = the first message, n = the n-th reminder
    step             INTEGER NOT NULL DEFAULT 0,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'claimed', 'notified', 'skipped', 'deferred', 'failed', 'converted')),
    reason           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    not_before       INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    sessions         INTEGER NOT NULL DEFAULT 0,
    notifications    INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    claimed_at       INTEGER,
    notified_at      INTEGER,
    finalized_at     INTEGER,
    -- outcomes (issue 6): the first message, when the user's last session expires,
    -- when PENDING was first seen after a message, and VERIFIED / REJECTED and when
    first_notified_at  INTEGER,
    session_expires_at INTEGER,
    started_at         INTEGER,
    outcome            TEXT CHECK (outcome IN ('verified', 'rejected')),
    outcome_at         INTEGER,
    PRIMARY KEY (campaign_id, user_id)
);
-- claiming (status, not_before), and the heartbeat and release of a run's own
-- claims (status = 'claimed', then lease_owner among the few claimed rows). No index
-- on lease_owner: a per-user statement fenced on (campaign, user, owner) must take
-- the primary key, and a generic plan would prefer an owner index whose entries,
-- dead ones included, grow with every user the worker has claimed.
CREATE INDEX campaign_targets_claim ON campaign_targets (campaign_id, status, not_before);
-- a state change (webhook, sync) finds the user's targets in every campaign
CREATE INDEX campaign_targets_by_user ON campaign_targets (user_id);

-- The ledger that enforces the per-user limits. It never holds a session URL.
CREATE TABLE verification_sessions (
    session_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    campaign_id INTEGER REFERENCES campaigns (campaign_id),
    -- the target step this session was for (0 = first message, n = n-th reminder)
    step        INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'issued', 'delivered', 'delivery_failed', 'api_failed', 'unknown')),
    reserved_at INTEGER NOT NULL,
    issued_at   INTEGER,
    expires_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX verification_sessions_by_user ON verification_sessions (user_id, reserved_at);
CREATE INDEX verification_sessions_by_campaign ON verification_sessions (campaign_id, user_id, step);

-- Append-only audit trail.
CREATE TABLE events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    campaign_id INTEGER,
    user_id     TEXT,
    detail      TEXT
);
CREATE INDEX events_by_campaign ON events (campaign_id, event_id);
CREATE INDEX events_by_user ON events (user_id, event_id);

-- Webhook event ids already processed (deduplication of at-least-once delivery).
CREATE TABLE webhook_events (
    event_id    TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL
);
