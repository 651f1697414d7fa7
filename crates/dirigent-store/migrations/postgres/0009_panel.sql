-- What the control panel needs: each user's language, and the recent failures on its
-- dashboard found without reading every run.

-- `en` or `ru`; NULL: the browser's language.
ALTER TABLE users ADD COLUMN language TEXT;
CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
