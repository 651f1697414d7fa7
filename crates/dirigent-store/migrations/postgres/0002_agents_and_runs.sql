-- Agents, their enrollment and command outbox; runs, their history and output; robot modes.

ALTER TABLE robots ADD COLUMN mode TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE robots ADD COLUMN mode_reason TEXT;

CREATE TABLE agents (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    credential_hash TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL DEFAULT '',
    os_user TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    capacity BIGINT NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT '',
    online BOOLEAN NOT NULL DEFAULT FALSE,
    draining BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen_at BIGINT,
    -- The last event of the agent applied here: replays at or below it are ignored.
    last_event_id BIGINT NOT NULL DEFAULT 0,
    -- The id of the last command queued for the agent.
    last_command_id BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

-- Commands not yet acknowledged by their agent; resent on reconnect.
CREATE TABLE agent_commands (
    agent_id BIGINT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, id)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY NOT NULL,
    robot TEXT NOT NULL,
    agent_id BIGINT REFERENCES agents (id),
    state TEXT NOT NULL,
    reason TEXT,
    stop_requested BOOLEAN NOT NULL DEFAULT FALSE,
    automatic BOOLEAN NOT NULL,
    pid BIGINT,
    exit_code BIGINT,
    signal BIGINT,
    token_hash TEXT UNIQUE,
    not_before BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT
);
CREATE INDEX runs_by_state ON runs (state);
CREATE INDEX runs_by_robot ON runs (robot, created_at);

CREATE TABLE run_transitions (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    at BIGINT NOT NULL,
    cause TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_output (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    stream TEXT NOT NULL,
    at BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
