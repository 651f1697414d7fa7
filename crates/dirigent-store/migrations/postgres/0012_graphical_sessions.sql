-- Graphical sessions: the desktops (X servers) agents keep for robots that need one, their
-- history, who has taken one over, which session a run uses, and what each agent offers.

CREATE TABLE graphical_sessions (
    agent_id BIGINT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    display TEXT,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    state TEXT NOT NULL,
    run_id TEXT,
    reason TEXT,
    updated_at BIGINT NOT NULL,
    -- The operator who has taken it over, since when, and the run paused for it.
    controlled_by TEXT,
    controlled_since BIGINT,
    paused_run TEXT,
    PRIMARY KEY (agent_id, number)
);

CREATE TABLE graphical_session_changes (
    agent_id BIGINT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    at BIGINT NOT NULL,
    state TEXT NOT NULL,
    run_id TEXT,
    reason TEXT
);
CREATE INDEX graphical_session_changes_by_session ON graphical_session_changes (agent_id, number, at);

ALTER TABLE runs ADD COLUMN session BIGINT;
ALTER TABLE agents ADD COLUMN sessions_offered BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN sessions_unavailable TEXT;
