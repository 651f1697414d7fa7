-- The index of due triggers, restated with the condition the queries use (`WHERE enabled`):
-- SQLite matches a partial index only when the query's condition has the same form, and
-- `enabled = 1` is not `enabled = TRUE` to it.

DROP INDEX triggers_due;
CREATE INDEX triggers_due ON triggers (next_fire_at) WHERE enabled;
