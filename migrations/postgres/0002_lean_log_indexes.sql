-- The ledger is written on every call: each secondary index costs every
-- insert. Kept: (user_id, created_at) for users' views, request_id for
-- support lookups. Time ranges and purges scan; token queries use the
-- token's own counters.
DROP INDEX IF EXISTS idx_logs_created;
DROP INDEX IF EXISTS idx_logs_token;
