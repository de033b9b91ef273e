-- sluice schema v1 (SQLite). Flags are INTEGER 0/1 on every database.
CREATE TABLE users (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    username          TEXT    NOT NULL UNIQUE,
    password_hash     TEXT    NOT NULL,
    display_name      TEXT    NOT NULL DEFAULT '',
    email             TEXT    NOT NULL DEFAULT '',
    role              INTEGER NOT NULL DEFAULT 1,
    status            INTEGER NOT NULL DEFAULT 1,
    group_name        TEXT    NOT NULL DEFAULT 'default',
    quota             INTEGER NOT NULL DEFAULT 0,
    used_quota        INTEGER NOT NULL DEFAULT 0,
    request_count     INTEGER NOT NULL DEFAULT 0,
    access_token_hash TEXT    UNIQUE,
    auth_version      INTEGER NOT NULL DEFAULT 1,
    created_time      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE tokens (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id              INTEGER NOT NULL,
    key_hash             TEXT    NOT NULL UNIQUE,
    key_cipher           TEXT    NOT NULL,
    status               INTEGER NOT NULL DEFAULT 1,
    name                 TEXT    NOT NULL,
    created_time         INTEGER NOT NULL,
    accessed_time        INTEGER NOT NULL,
    expired_time         INTEGER NOT NULL DEFAULT -1,
    remain_quota         INTEGER NOT NULL DEFAULT 0,
    unlimited_quota      INTEGER NOT NULL DEFAULT 0,
    used_quota           INTEGER NOT NULL DEFAULT 0,
    request_count        INTEGER NOT NULL DEFAULT 0,
    model_limits_enabled INTEGER NOT NULL DEFAULT 0,
    model_limits         TEXT    NOT NULL DEFAULT '',
    allow_ips            TEXT    NOT NULL DEFAULT '',
    group_name           TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX idx_tokens_user ON tokens (user_id, id);

CREATE TABLE options (
    opt_key   TEXT PRIMARY KEY,
    opt_value TEXT NOT NULL
);

CREATE TABLE redemptions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL,
    code          TEXT    NOT NULL UNIQUE,
    status        INTEGER NOT NULL DEFAULT 1,
    name          TEXT    NOT NULL,
    quota         INTEGER NOT NULL DEFAULT 0,
    created_time  INTEGER NOT NULL,
    redeemed_time INTEGER NOT NULL DEFAULT 0,
    used_user_id  INTEGER NOT NULL DEFAULT 0,
    expired_time  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE channels (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    type                 INTEGER NOT NULL DEFAULT 1,
    name                 TEXT    NOT NULL,
    key_cipher           TEXT    NOT NULL,
    base_url             TEXT    NOT NULL DEFAULT '',
    models               TEXT    NOT NULL DEFAULT '',
    model_mapping        TEXT    NOT NULL DEFAULT '',
    group_names          TEXT    NOT NULL DEFAULT 'default',
    priority             INTEGER NOT NULL DEFAULT 0,
    weight               INTEGER NOT NULL DEFAULT 0,
    status               INTEGER NOT NULL DEFAULT 1,
    test_model           TEXT    NOT NULL DEFAULT '',
    response_time        INTEGER NOT NULL DEFAULT 0,
    test_time            INTEGER NOT NULL DEFAULT 0,
    used_quota           INTEGER NOT NULL DEFAULT 0,
    request_count        INTEGER NOT NULL DEFAULT 0,
    balance              REAL    NOT NULL DEFAULT 0,
    balance_updated_time INTEGER NOT NULL DEFAULT 0,
    created_time         INTEGER NOT NULL DEFAULT 0,
    other                TEXT    NOT NULL DEFAULT '',
    tag                  TEXT    NOT NULL DEFAULT '',
    auto_ban             INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE logs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at        INTEGER NOT NULL,
    type              INTEGER NOT NULL,
    content           TEXT    NOT NULL DEFAULT '',
    user_id           INTEGER NOT NULL DEFAULT 0,
    username          TEXT    NOT NULL DEFAULT '',
    token_id          INTEGER NOT NULL DEFAULT 0,
    token_name        TEXT    NOT NULL DEFAULT '',
    model_name        TEXT    NOT NULL DEFAULT '',
    channel_id        INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    quota             INTEGER NOT NULL DEFAULT 0,
    use_time          INTEGER NOT NULL DEFAULT 0,
    is_stream         INTEGER NOT NULL DEFAULT 0,
    ip                TEXT    NOT NULL DEFAULT '',
    group_name        TEXT    NOT NULL DEFAULT '',
    request_id        TEXT    NOT NULL DEFAULT '',
    other             TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX idx_logs_created ON logs (created_at);
CREATE INDEX idx_logs_user_created ON logs (user_id, created_at);
CREATE INDEX idx_logs_token ON logs (token_id);
CREATE INDEX idx_logs_request ON logs (request_id);
