-- Compliance controls (issue 16): the audit chain, every applied campaign file,
-- approvals, and the templates they cover. Keep in step with migrations/sqlite.

-- The chain. Events are inserted as before (hot path, many writers at once); a
-- sealer, one at a time, gives each committed unsealed event its place in the
-- chain (chain_seq, in sealing order), the hash of the event before it and its own
-- hash. audit_chain is the head: the last sealed place and hash, and when the last
-- seal ran (an unsealed event older than that by more than the grace is taken to be
-- inserted behind the log's back, and never sealed).
ALTER TABLE events ADD COLUMN chain_seq BIGINT;
ALTER TABLE events ADD COLUMN prev_hash TEXT;
ALTER TABLE events ADD COLUMN hash TEXT;
-- both partial: an insert in the hot path adds no entry to the first, and the
-- second holds only the few events waiting for the sealer
CREATE UNIQUE INDEX events_by_chain_seq ON events (chain_seq) WHERE chain_seq IS NOT NULL;
CREATE INDEX events_unsealed ON events (event_id) WHERE chain_seq IS NULL;
CREATE TABLE audit_chain (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL,
    hash      TEXT NOT NULL,
    sealed_at BIGINT
);
INSERT INTO audit_chain (id, seq, hash, sealed_at)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', NULL);

-- Every applied version of a campaign file, with who applied it. Versions applied
-- before this migration keep only the current one, applied by whoever the audit
-- trail says applied it last.
CREATE TABLE campaign_versions (
    campaign_id BIGINT NOT NULL REFERENCES campaigns (campaign_id),
    version     BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    spec_hash   TEXT NOT NULL,
    applied_by  TEXT NOT NULL,
    applied_at  BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, version)
);
INSERT INTO campaign_versions (campaign_id, version, spec, spec_hash, applied_by, applied_at)
SELECT c.campaign_id, c.version, c.spec, c.spec_hash,
       COALESCE((SELECT e.actor FROM events e WHERE e.campaign_id = c.campaign_id AND e.kind = 'campaign.applied'
                 ORDER BY e.event_id DESC LIMIT 1), 'unknown'),
       c.updated_at
FROM campaigns c;

-- Approvals of campaign versions (a version approved again when its templates
-- changed has several; the latest counts). `digest` covers the file, the templates it
-- uses (`templates`: name -> SHA-256) and its plan at approval (`plan`).
CREATE TABLE campaign_approvals (
    approval_id BIGSERIAL PRIMARY KEY,
    campaign_id BIGINT NOT NULL REFERENCES campaigns (campaign_id),
    version     BIGINT NOT NULL,
    approver    TEXT NOT NULL,
    approved_at BIGINT NOT NULL,
    digest      TEXT NOT NULL,
    templates   TEXT NOT NULL,
    plan        TEXT NOT NULL
);
CREATE INDEX campaign_approvals_by_campaign ON campaign_approvals (campaign_id, version);

-- Template versions, by content: the SHA-256 over a template's files, and the
-- files themselves (JSON: file -> text), kept for the evidence bundle.
CREATE TABLE template_versions (
    digest        TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    sources       TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL
);
