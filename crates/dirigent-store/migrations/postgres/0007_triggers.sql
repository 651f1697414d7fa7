-- Triggers and the calendars they follow. Definitions are kept as their JSON specs, checked
-- when written and read.

CREATE TABLE calendars (
    name TEXT PRIMARY KEY NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE triggers (
    id TEXT PRIMARY KEY NOT NULL,
    robot TEXT NOT NULL,
    calendar TEXT REFERENCES calendars (name),
    spec TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    next_fire_at BIGINT,
    disabled_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The scheduler sleeps until the earliest of these.
CREATE INDEX triggers_due ON triggers (next_fire_at) WHERE enabled;

-- Every firing of a trigger and what became of it: due (taken, its run not yet started),
-- started, skipped or missed, with the reason.
CREATE TABLE trigger_firings (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger_id TEXT NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    due_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    run_id TEXT,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX trigger_firings_trigger ON trigger_firings (trigger_id, id);
CREATE INDEX trigger_firings_due ON trigger_firings (outcome) WHERE outcome = 'due';
