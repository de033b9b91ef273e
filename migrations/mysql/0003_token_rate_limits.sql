-- Per-key rate limits (sluice's extension; 0 = none): requests and tokens
-- per minute.
ALTER TABLE tokens ADD COLUMN rpm_limit BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN tpm_limit BIGINT NOT NULL DEFAULT 0;
