-- The SQLite schema restates its index of due triggers as `WHERE enabled` here; PostgreSQL's
-- had that form from the start (0007), so nothing changes.

SELECT 1;
