-- A campaign's life (issue 23): `completed` once its `ends_at` has passed, and when.
-- Kept in step with migrations/sqlite/0011_campaign_life.sql.
-- Reminders wait on the claim index: a notified target's `not_before` is when its
-- next reminder is due (see store::followup).
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_status_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_status_check
    CHECK (status IN ('active', 'paused', 'cancelled', 'finished', 'completed'));
ALTER TABLE campaigns ADD COLUMN completed_at BIGINT;
-- outcomes (webhooks, sync) update a completed campaign's targets until then
ALTER TABLE campaigns ADD COLUMN outcomes_until BIGINT;
-- a notified target's not_before was left over from its last deferral; it now
-- means the next reminder's time, stamped by the next run
UPDATE campaign_targets SET not_before = NULL WHERE status = 'notified';
