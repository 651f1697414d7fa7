-- The audit log: every state-changing request and every denial. Nothing updates or deletes it
-- but retention.

CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    address TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL
);
CREATE INDEX audit_log_by_actor ON audit_log (actor, id);
