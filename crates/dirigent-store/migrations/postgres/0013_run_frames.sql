-- Frames of runs' screens: thumbnails taken while a run that needs a display runs, and its
-- last screen.

CREATE TABLE run_frames (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    last BOOLEAN NOT NULL,
    png BYTEA NOT NULL,
    PRIMARY KEY (run_id, seq)
);
