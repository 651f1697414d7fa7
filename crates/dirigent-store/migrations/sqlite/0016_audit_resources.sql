-- The resources an audited request was about (`robot:hr-b run:run_1…`), space-separated.

ALTER TABLE audit_log ADD COLUMN resources TEXT NOT NULL DEFAULT '';
