-- Several orchestrator nodes on one database: the nodes and their heartbeats, leases for the
-- work one node at a time does, which node holds each agent's connection and took each
-- firing, and a version on runs so that every change of one is a compare-and-set.

CREATE TABLE nodes (
    id TEXT PRIMARY KEY NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- A lease: held by one node until it expires, renewed by its holder.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Failed logins, per user name and per client address, shared by every node.
CREATE TABLE login_failures (
    subject TEXT PRIMARY KEY NOT NULL,
    failures BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    locked_until BIGINT
);

ALTER TABLE runs ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN node_id TEXT;
ALTER TABLE trigger_firings ADD COLUMN node_id TEXT;

-- Run tokens are no longer kept: start commands queued before carried them in plain text.
UPDATE agent_commands SET body = json_remove(body, '$.env.DIRIGENT_RUN_TOKEN')
WHERE body LIKE '%DIRIGENT_RUN_TOKEN%';
