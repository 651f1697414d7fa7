-- One store of log records: robots' output and structured records, agents' and the
-- orchestrator's own logs, and activities' output, searchable through `logs_fts`. A run's or
-- an activity's lines are numbered from 1 under it (`seq`, so a resent batch is skipped) and
-- go with it. Ids only grow (never reused), so they order records and page through them.

CREATE TABLE logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    -- 'robot', 'agent', 'server' or 'activity'.
    source TEXT NOT NULL,
    -- 'trace', 'debug', 'info', 'warn' or 'error'.
    level TEXT NOT NULL,
    robot TEXT,
    run_id TEXT REFERENCES runs (id) ON DELETE CASCADE,
    activity_id TEXT REFERENCES activities (id) ON DELETE CASCADE,
    agent TEXT,
    node TEXT,
    seq INTEGER,
    -- 'stdout' or 'stderr', for output.
    stream TEXT,
    -- A JSON object of the record's structured fields.
    fields TEXT,
    text TEXT NOT NULL
);

CREATE UNIQUE INDEX logs_run_seq ON logs (run_id, seq) WHERE run_id IS NOT NULL;
CREATE UNIQUE INDEX logs_activity_seq ON logs (activity_id, seq) WHERE activity_id IS NOT NULL;
CREATE INDEX logs_robot ON logs (robot, id) WHERE robot IS NOT NULL;
CREATE INDEX logs_agent ON logs (agent, id) WHERE agent IS NOT NULL;
CREATE INDEX logs_at ON logs (at);

CREATE VIRTUAL TABLE logs_fts USING fts5 (text, fields, content = 'logs', content_rowid = 'id');

-- The fields are indexed as their JSON with the escapes of line breaks and tabs undone, so
-- that a value's words are words (`\nZeroDivisionError` is `ZeroDivisionError`).
CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN
    INSERT INTO logs_fts (rowid, text, fields) VALUES (new.id, new.text,
        replace(replace(replace(new.fields, '\n', ' '), '\r', ' '), '\t', ' '));
END;

CREATE TRIGGER logs_fts_delete AFTER DELETE ON logs BEGIN
    INSERT INTO logs_fts (logs_fts, rowid, text, fields) VALUES ('delete', old.id, old.text,
        replace(replace(replace(old.fields, '\n', ' '), '\r', ' '), '\t', ' '));
END;

INSERT INTO logs (at, source, level, robot, run_id, agent, seq, stream, text)
SELECT o.at, 'robot', CASE o.stream WHEN 'stderr' THEN 'warn' ELSE 'info' END, r.robot,
       o.run_id, a.name, o.seq, o.stream, o.text
FROM run_output o JOIN runs r ON r.id = o.run_id LEFT JOIN agents a ON a.id = r.agent_id
ORDER BY o.at, o.run_id, o.seq;

INSERT INTO logs (at, source, level, activity_id, agent, node, seq, stream, text)
SELECT o.at, 'activity', CASE o.stream WHEN 'stderr' THEN 'warn' ELSE 'info' END,
       o.activity_id, a.name, t.node, o.seq, o.stream, o.text
FROM activity_output o JOIN activities t ON t.id = o.activity_id
LEFT JOIN agents a ON a.id = t.agent_id
ORDER BY o.at, o.activity_id, o.seq;

-- A range of ids holding each hour's records (by their time; the ids a transaction gave, for
-- each hour it wrote to): a search within a time range reads only the ids of its hours.
CREATE TABLE log_hours (
    hour BIGINT PRIMARY KEY NOT NULL,
    min_id BIGINT NOT NULL,
    max_id BIGINT NOT NULL
);

INSERT INTO log_hours (hour, min_id, max_id)
SELECT at / 3600000, MIN(id), MAX(id) FROM logs GROUP BY at / 3600000;

DROP TABLE run_output;
DROP TABLE activity_output;
