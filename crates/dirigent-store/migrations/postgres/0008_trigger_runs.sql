-- What a trigger's runs start with, and what became of them: queue triggers, the count of
-- failed runs in a row behind auto-disable, and extra arguments and environment per run.

ALTER TABLE triggers ADD COLUMN queue TEXT;
ALTER TABLE triggers ADD COLUMN consecutive_failures BIGINT NOT NULL DEFAULT 0;
-- Items added to a queue wake the triggers that watch it.
CREATE INDEX triggers_queue ON triggers (queue) WHERE queue IS NOT NULL;
-- A run's end finds the firing that started it.
CREATE INDEX trigger_firings_run ON trigger_firings (run_id) WHERE run_id IS NOT NULL;

-- JSON: a list of arguments appended to the robot's command, and an object of environment
-- variables added to the robot's; NULL when none.
ALTER TABLE runs ADD COLUMN args TEXT;
ALTER TABLE runs ADD COLUMN env TEXT;
