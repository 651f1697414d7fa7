-- Activities: typed operations run on agents and on the orchestrator, their output, and the
-- orchestrator's own switches (maintenance).

CREATE TABLE activities (
    id TEXT PRIMARY KEY NOT NULL,
    parent_id TEXT REFERENCES activities (id) ON DELETE CASCADE,
    -- 'server', an agent's name, or (for a fan-out) its label selector.
    target TEXT NOT NULL,
    agent_id BIGINT REFERENCES agents (id) ON DELETE SET NULL,
    operation TEXT NOT NULL,
    -- The arguments as shown: secrets redacted (the agent's command carries them).
    args TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    result TEXT,
    timeout_ms BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    -- The agent command that carries it.
    command_id BIGINT,
    -- The node running it (server activities).
    node TEXT
);

CREATE INDEX activities_newest ON activities (created_at DESC, id DESC);
CREATE INDEX activities_parent ON activities (parent_id);
CREATE INDEX activities_active ON activities (state, created_at) WHERE state IN ('queued', 'running');

CREATE TABLE activity_output (
    activity_id TEXT NOT NULL REFERENCES activities (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    stream TEXT NOT NULL,
    at BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (activity_id, seq)
);

CREATE TABLE server_switches (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at BIGINT NOT NULL
);

-- Files uploaded for activities (a new agent binary), by SHA-256, in chunks.
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY NOT NULL,
    size BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE blob_chunks (
    sha256 TEXT NOT NULL REFERENCES blobs (sha256) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (sha256, seq)
);
