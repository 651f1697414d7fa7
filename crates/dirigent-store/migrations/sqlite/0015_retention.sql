-- What retention deletes by age is found by these (ended runs by `runs_ended`, 0009).

CREATE INDEX trigger_firings_recorded ON trigger_firings (recorded_at);
CREATE INDEX queue_item_attempts_ended ON queue_item_attempts (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX activities_ended ON activities (ended_at) WHERE ended_at IS NOT NULL;
