-- Robots, users, sessions and API tokens. Times are milliseconds since the Unix epoch (UTC);
-- lists and maps are JSON text.

CREATE TABLE robots (
    name TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL,
    argv TEXT NOT NULL,
    working_dir TEXT,
    env TEXT NOT NULL,
    agent TEXT NOT NULL,
    max_parallel INTEGER NOT NULL,
    stop_grace_seconds INTEGER NOT NULL,
    max_duration_seconds INTEGER,
    restart_policy TEXT NOT NULL,
    restart_backoff_initial_seconds INTEGER NOT NULL,
    restart_backoff_max_seconds INTEGER NOT NULL,
    crash_loop_max_starts INTEGER NOT NULL,
    crash_loop_window_seconds INTEGER NOT NULL,
    needs_display BOOLEAN NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    last_used_at INTEGER,
    revoked_at INTEGER
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (user_id, name) WHERE revoked_at IS NULL;
