-- Work-item queues, their items and each item's attempts; the queues a robot's runs may use.

ALTER TABLE robots ADD COLUMN queues TEXT NOT NULL DEFAULT '[]';

CREATE TABLE queues (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    max_attempts INTEGER NOT NULL,
    retry_delay_seconds INTEGER NOT NULL,
    retry_backoff INTEGER NOT NULL,
    lease_seconds INTEGER NOT NULL,
    enforce_unique_reference BOOLEAN NOT NULL,
    retention_days INTEGER NOT NULL,
    max_payload_bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE queue_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id INTEGER NOT NULL REFERENCES queues (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    -- 0 high, 1 normal, 2 low.
    priority INTEGER NOT NULL,
    reference TEXT,
    -- Whether the reference was unique in its queue when the item was added.
    unique_reference BOOLEAN NOT NULL,
    payload TEXT NOT NULL,
    output TEXT,
    error_kind TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    deadline INTEGER,
    -- The deadline, or the largest integer: the first key of the claim order.
    deadline_key INTEGER NOT NULL,
    -- Postponed or waiting for a retry until then.
    available_at INTEGER NOT NULL,
    -- SHA-256 of the lease token of the current claim.
    lease_digest TEXT,
    lease_expires_at INTEGER,
    -- The run (or user) of the last claim.
    run_id TEXT,
    claimed_by TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    updated_at INTEGER NOT NULL
);

-- Claims walk this index in claim order.
CREATE INDEX queue_items_ready ON queue_items (queue_id, status, deadline_key, priority, id);
CREATE INDEX queue_items_leases ON queue_items (lease_expires_at) WHERE status = 'in_progress';
CREATE INDEX queue_items_runs ON queue_items (run_id) WHERE status = 'in_progress';
CREATE INDEX queue_items_reference ON queue_items (queue_id, reference);
CREATE INDEX queue_items_finished ON queue_items (queue_id, finished_at);
CREATE UNIQUE INDEX queue_items_unique_reference ON queue_items (queue_id, reference)
    WHERE unique_reference = 1 AND status <> 'deleted';

-- One row per claim; the open one has no end yet. A requeued item counts its attempts anew.
CREATE TABLE queue_item_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL REFERENCES queue_items (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    run_id TEXT,
    claimed_by TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    -- successful, failed, retried, postponed, abandoned, lease_expired, run_lost, run_ended.
    outcome TEXT,
    error_kind TEXT,
    error_message TEXT
);
CREATE INDEX queue_item_attempts_item ON queue_item_attempts (item_id, ended_at);
