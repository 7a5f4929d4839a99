-- A REJECTED user with no known rejection time was read as "rejected now" at every
-- evaluation, so the 24 h cooldown started again each time and never ended. The
-- worker now stores the time it first sees such a user REJECTED; rows written
-- before get the best time on record: when the state last changed (when we saw it
-- become REJECTED), else the row's last update. Either is no earlier than the real
-- rejection, so the cooldown ends no sooner than Baanx's. Keep in step with
-- migrations/postgres/0004_rejection_first_seen.sql.
UPDATE users SET rejected_at = COALESCE(state_changed_at, updated_at)
WHERE verification_state = 'REJECTED' AND rejected_at IS NULL;
