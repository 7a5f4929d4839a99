-- Compliance gates (issue 16, part B). Kept in step with
-- migrations/sqlite/0008_compliance_gates.sql.
-- The last rejection's code and reason, as Baanx gives them (kyc.status.changed):
-- `audience.exclude_rejection_codes` keeps final rejections out of campaigns.
ALTER TABLE users ADD COLUMN failure_code TEXT;
ALTER TABLE users ADD COLUMN failure_reason TEXT;
-- `users forget`: when the person's data was erased (the row stays, pseudonymous).
ALTER TABLE users ADD COLUMN forgotten_at BIGINT;
-- Why a campaign is paused when the worker paused it (`canary_review`, a halt), with
-- the figures; NULL when a person paused it.
ALTER TABLE campaigns ADD COLUMN pause_reason TEXT;
ALTER TABLE campaigns ADD COLUMN pause_detail TEXT;
-- `[rollout] canary`: when a person resumed the campaign after its canary review.
ALTER TABLE campaigns ADD COLUMN canary_released_at BIGINT;
