-- Click-through links (delivery.link = "click"): the message carries a link to our
-- own page; the session is made when the person clicks. The token itself is never
-- stored, only its SHA-256. Kept in step between the two engines.
CREATE TABLE verification_links (
    link_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash         TEXT NOT NULL UNIQUE,
    campaign_id        INTEGER NOT NULL REFERENCES campaigns (campaign_id),
    user_id            TEXT NOT NULL REFERENCES users (user_id),
    step               INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    delivered_at       INTEGER,
    revoked_at         INTEGER,
    revoked_reason     TEXT,
    clicks             INTEGER NOT NULL DEFAULT 0,
    last_click_at      INTEGER,
    -- the click that last took the right to make a session (30 s debounce)
    session_started_at INTEGER
);
CREATE INDEX verification_links_by_user ON verification_links (user_id);
CREATE INDEX verification_links_by_campaign ON verification_links (campaign_id, user_id, step);

-- the funnel's clicked stage
ALTER TABLE campaign_targets ADD COLUMN clicked_at INTEGER;
ALTER TABLE campaign_targets ADD COLUMN clicks INTEGER NOT NULL DEFAULT 0;
-- a session made from a click carries its link
ALTER TABLE verification_sessions ADD COLUMN link_id INTEGER;
