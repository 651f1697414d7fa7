-- API tokens may carry a subset of their owner's permissions (JSON); none means all of them.

ALTER TABLE api_tokens ADD COLUMN permissions TEXT;
