-- Triggers and the calendars they follow. Definitions are kept as their JSON specs, checked
-- when written and read.

CREATE TABLE calendars (
    name TEXT PRIMARY KEY NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE triggers (
    id TEXT PRIMARY KEY NOT NULL,
    robot TEXT NOT NULL,
    calendar TEXT REFERENCES calendars (name),
    spec TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    next_fire_at INTEGER,
    disabled_reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The scheduler sleeps until the earliest of these.
CREATE INDEX triggers_due ON triggers (next_fire_at) WHERE enabled = 1;
