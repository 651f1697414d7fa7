-- What an audited request was about: the resources (`robot:hr-b run:run_1…`, space-separated)
-- and the fields it changed.
ALTER TABLE audit_log ADD COLUMN resources TEXT NOT NULL DEFAULT '';

-- The fields a change set, as JSON: {"field": [before, after]}, secrets redacted.
ALTER TABLE audit_log ADD COLUMN changes TEXT;
