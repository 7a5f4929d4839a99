-- Room on each page for a row's next version (issue 8). A run updates each of its
-- users' rows twice (the rotated refresh token, then the fresh state) and each
-- ledger row twice (`issued`, then the delivery). On a full page every such update
-- moves the row to another page and adds an entry to each of the table's indexes;
-- with room left on the page it is a heap-only (HOT) update that touches no index,
-- because none of those columns is indexed. Applies to pages written from now on.
ALTER TABLE users SET (fillfactor = 80);
ALTER TABLE verification_sessions SET (fillfactor = 80);
