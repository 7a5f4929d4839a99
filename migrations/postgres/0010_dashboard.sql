-- The dashboard's series (issue 18): first messages and conversions per hour of a
-- campaign, each read as a range of its own index. Partial, so that targeting
-- (which inserts rows with neither set) writes no entry in them.
CREATE INDEX campaign_targets_sent ON campaign_targets (campaign_id, first_notified_at)
    WHERE first_notified_at IS NOT NULL;
CREATE INDEX campaign_targets_verified ON campaign_targets (campaign_id, outcome_at)
    WHERE outcome = 'verified';
