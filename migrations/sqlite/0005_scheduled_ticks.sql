-- Kept in step with migrations/postgres/0005_scheduled_ticks.sql.
-- A scheduled tick counts as done only when a run of it finished (README,
-- "Scheduling"). `tick_in_progress` is the tick a scheduled run started and no
-- finished run has covered yet (an interrupted, killed or failed run leaves it set,
-- and the next `run --due` resumes it, whatever the starting deadline);
-- `done_through` is the start of the latest run that finished: every tick at or
-- before it is done. `last_run_at` stays the start of the latest run of any outcome.
-- Existing campaigns keep what the old rule said was done, so the upgrade makes
-- nothing due that was not due before.
ALTER TABLE campaigns ADD COLUMN tick_in_progress INTEGER;
ALTER TABLE campaigns ADD COLUMN done_through INTEGER;
UPDATE campaigns SET done_through = last_run_at;
