-- Proven approvals (issue 24). Keep in step with the other engine's file.

-- Settings the database holds, so that no runner's environment can switch them
-- off: `require_approval` ('false', 'true', or 'signed' when approvals need SSH
-- signatures). Each change is audited (settings.changed) by the store.
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL,
    set_by TEXT NOT NULL,
    set_at INTEGER NOT NULL
);

-- The SSH signature (SSHSIG, namespace reverify, armored) that proved who applied
-- a version and who approved it, when approvers_file is set; a run checks both
-- again before it sends.
ALTER TABLE campaign_versions ADD COLUMN signature TEXT;
ALTER TABLE campaign_approvals ADD COLUMN signature TEXT;
