-- Kept in step with migrations/postgres/0002_room_for_updates.sql, which leaves room
-- on each page of `users` and `verification_sessions` for updates (a Postgres
-- storage setting). SQLite rewrites a row in place: nothing to do here.
SELECT 1;
