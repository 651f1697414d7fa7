-- Work-item queues, their items and each item's attempts; the queues a robot's runs may use.

ALTER TABLE robots ADD COLUMN queues TEXT NOT NULL DEFAULT '[]';

CREATE TABLE queues (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    max_attempts BIGINT NOT NULL,
    retry_delay_seconds BIGINT NOT NULL,
    retry_backoff BIGINT NOT NULL,
    lease_seconds BIGINT NOT NULL,
    enforce_unique_reference BOOLEAN NOT NULL,
    retention_days BIGINT NOT NULL,
    max_payload_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE queue_items (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id BIGINT NOT NULL REFERENCES queues (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    -- 0 high, 1 normal, 2 low.
    priority BIGINT NOT NULL,
    reference TEXT,
    -- Whether the reference was unique in its queue when the item was added.
    unique_reference BOOLEAN NOT NULL,
    payload TEXT NOT NULL,
    output TEXT,
    error_kind TEXT,
    error_message TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    deadline BIGINT,
    -- The deadline, or the largest integer: the first key of the claim order.
    deadline_key BIGINT NOT NULL,
    -- Postponed or waiting for a retry until then.
    available_at BIGINT NOT NULL,
    -- SHA-256 of the lease token of the current claim.
    lease_digest TEXT,
    lease_expires_at BIGINT,
    -- The run (or user) of the last claim.
    run_id TEXT,
    claimed_by TEXT,
    -- How the last attempt ended; the trigger below copies it to the attempt's row.
    last_outcome TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);

-- Claims walk this index in claim order.
CREATE INDEX queue_items_ready ON queue_items (queue_id, status, deadline_key, priority, id);
CREATE INDEX queue_items_leases ON queue_items (lease_expires_at) WHERE status = 'in_progress';
CREATE INDEX queue_items_runs ON queue_items (run_id) WHERE status = 'in_progress';
CREATE INDEX queue_items_reference ON queue_items (queue_id, reference);
CREATE INDEX queue_items_status ON queue_items (queue_id, status, id);
CREATE UNIQUE INDEX queue_items_unique_reference ON queue_items (queue_id, reference)
    WHERE unique_reference = TRUE AND status <> 'deleted';

-- One row per claim; the open one has no end yet. A requeued item counts its attempts anew.
CREATE TABLE queue_item_attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id BIGINT NOT NULL REFERENCES queue_items (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    run_id TEXT,
    claimed_by TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    -- successful, failed, retried, postponed, abandoned, lease_expired, run_lost, run_ended.
    outcome TEXT,
    error_kind TEXT,
    error_message TEXT
);
CREATE INDEX queue_item_attempts_item ON queue_item_attempts (item_id, ended_at);

-- An item's attempts are recorded by the database itself as its status changes: a claim opens
-- one, leaving `in_progress` closes it.
CREATE FUNCTION queue_item_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'in_progress' AND OLD.status <> 'in_progress' THEN
        INSERT INTO queue_item_attempts (item_id, attempt, run_id, claimed_by, started_at)
        VALUES (NEW.id, NEW.attempts, NEW.run_id, NEW.claimed_by, NEW.started_at);
    ELSIF OLD.status = 'in_progress' AND NEW.status <> 'in_progress' THEN
        UPDATE queue_item_attempts SET ended_at = NEW.updated_at, outcome = NEW.last_outcome,
            error_kind = CASE WHEN NEW.last_outcome IN ('failed', 'retried', 'abandoned')
                THEN NEW.error_kind END,
            error_message = CASE WHEN NEW.last_outcome IN ('failed', 'retried', 'abandoned')
                THEN NEW.error_message END
        WHERE item_id = NEW.id AND ended_at IS NULL;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER queue_item_attempt AFTER UPDATE OF status ON queue_items
FOR EACH ROW EXECUTE FUNCTION queue_item_attempt();

-- Items per queue and status, kept current by adds and by the triggers below, so that a queue's
-- figures are read, not counted.
CREATE TABLE queue_counts (
    queue_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (queue_id, status)
);

-- Items finished successfully per queue and minute, and the milliseconds they took.
CREATE TABLE queue_minutes (
    queue_id BIGINT NOT NULL,
    minute BIGINT NOT NULL,
    successful BIGINT NOT NULL,
    processing_ms BIGINT NOT NULL,
    PRIMARY KEY (queue_id, minute)
);

CREATE FUNCTION queue_item_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE queue_counts SET count = count - 1 WHERE queue_id = OLD.queue_id AND status = OLD.status;
        RETURN NULL;
    END IF;
    IF NEW.status <> OLD.status THEN
        UPDATE queue_counts SET count = count - 1 WHERE queue_id = OLD.queue_id AND status = OLD.status;
        INSERT INTO queue_counts (queue_id, status, count) VALUES (NEW.queue_id, NEW.status, 1)
            ON CONFLICT (queue_id, status) DO UPDATE SET count = queue_counts.count + 1;
    END IF;
    IF NEW.status = 'successful' AND OLD.status <> 'successful' THEN
        INSERT INTO queue_minutes (queue_id, minute, successful, processing_ms)
            VALUES (NEW.queue_id, NEW.finished_at / 60000, 1,
                    NEW.finished_at - COALESCE(NEW.started_at, NEW.finished_at))
            ON CONFLICT (queue_id, minute) DO UPDATE SET successful = queue_minutes.successful + 1,
                processing_ms = queue_minutes.processing_ms + excluded.processing_ms;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER queue_item_counted AFTER UPDATE OF status ON queue_items
FOR EACH ROW EXECUTE FUNCTION queue_item_figures();
CREATE TRIGGER queue_item_removed AFTER DELETE ON queue_items
FOR EACH ROW EXECUTE FUNCTION queue_item_figures();
