-- sluice schema v1 (PostgreSQL). Flags are INTEGER 0/1 on every database.
CREATE TABLE users (
    id                BIGSERIAL PRIMARY KEY,
    username          VARCHAR(64)  NOT NULL UNIQUE,
    password_hash     VARCHAR(255) NOT NULL,
    display_name      VARCHAR(64)  NOT NULL DEFAULT '',
    email             VARCHAR(128) NOT NULL DEFAULT '',
    role              INTEGER NOT NULL DEFAULT 1,
    status            INTEGER NOT NULL DEFAULT 1,
    group_name        VARCHAR(64) NOT NULL DEFAULT 'default',
    quota             BIGINT  NOT NULL DEFAULT 0,
    used_quota        BIGINT  NOT NULL DEFAULT 0,
    request_count     BIGINT  NOT NULL DEFAULT 0,
    access_token_hash VARCHAR(64) UNIQUE,
    auth_version      BIGINT  NOT NULL DEFAULT 1,
    created_time      BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE tokens (
    id                   BIGSERIAL PRIMARY KEY,
    user_id              BIGINT  NOT NULL,
    key_hash             VARCHAR(64) NOT NULL UNIQUE,
    key_cipher           VARCHAR(255) NOT NULL,
    status               INTEGER NOT NULL DEFAULT 1,
    name                 VARCHAR(255) NOT NULL,
    created_time         BIGINT  NOT NULL,
    accessed_time        BIGINT  NOT NULL,
    expired_time         BIGINT  NOT NULL DEFAULT -1,
    remain_quota         BIGINT  NOT NULL DEFAULT 0,
    unlimited_quota      INTEGER NOT NULL DEFAULT 0,
    used_quota           BIGINT  NOT NULL DEFAULT 0,
    request_count        BIGINT  NOT NULL DEFAULT 0,
    model_limits_enabled INTEGER NOT NULL DEFAULT 0,
    model_limits         TEXT    NOT NULL DEFAULT '',
    allow_ips            TEXT    NOT NULL DEFAULT '',
    group_name           VARCHAR(64) NOT NULL DEFAULT ''
);
CREATE INDEX idx_tokens_user ON tokens (user_id, id);

CREATE TABLE options (
    opt_key   VARCHAR(128) PRIMARY KEY,
    opt_value TEXT NOT NULL
);

CREATE TABLE redemptions (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT  NOT NULL,
    code          VARCHAR(64) NOT NULL UNIQUE,
    status        INTEGER NOT NULL DEFAULT 1,
    name          VARCHAR(64) NOT NULL,
    quota         BIGINT  NOT NULL DEFAULT 0,
    created_time  BIGINT  NOT NULL,
    redeemed_time BIGINT  NOT NULL DEFAULT 0,
    used_user_id  BIGINT  NOT NULL DEFAULT 0,
    expired_time  BIGINT  NOT NULL DEFAULT 0
);

CREATE TABLE channels (
    id                   BIGSERIAL PRIMARY KEY,
    type                 INTEGER NOT NULL DEFAULT 1,
    name                 VARCHAR(255) NOT NULL,
    key_cipher           TEXT    NOT NULL,
    base_url             VARCHAR(1024) NOT NULL DEFAULT '',
    models               TEXT    NOT NULL DEFAULT '',
    model_mapping        TEXT    NOT NULL DEFAULT '',
    group_names          VARCHAR(1024) NOT NULL DEFAULT 'default',
    priority             BIGINT  NOT NULL DEFAULT 0,
    weight               BIGINT  NOT NULL DEFAULT 0,
    status               INTEGER NOT NULL DEFAULT 1,
    test_model           VARCHAR(255) NOT NULL DEFAULT '',
    response_time        BIGINT  NOT NULL DEFAULT 0,
    test_time            BIGINT  NOT NULL DEFAULT 0,
    used_quota           BIGINT  NOT NULL DEFAULT 0,
    request_count        BIGINT  NOT NULL DEFAULT 0,
    balance              DOUBLE PRECISION NOT NULL DEFAULT 0,
    balance_updated_time BIGINT  NOT NULL DEFAULT 0,
    created_time         BIGINT  NOT NULL DEFAULT 0,
    other                TEXT    NOT NULL DEFAULT '',
    tag                  VARCHAR(255) NOT NULL DEFAULT '',
    auto_ban             INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE logs (
    id                BIGSERIAL PRIMARY KEY,
    created_at        BIGINT  NOT NULL,
    type              INTEGER NOT NULL,
    content           TEXT    NOT NULL DEFAULT '',
    user_id           BIGINT  NOT NULL DEFAULT 0,
    username          VARCHAR(64) NOT NULL DEFAULT '',
    token_id          BIGINT  NOT NULL DEFAULT 0,
    token_name        VARCHAR(255) NOT NULL DEFAULT '',
    model_name        VARCHAR(255) NOT NULL DEFAULT '',
    channel_id        BIGINT  NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT  NOT NULL DEFAULT 0,
    completion_tokens BIGINT  NOT NULL DEFAULT 0,
    quota             BIGINT  NOT NULL DEFAULT 0,
    use_time          BIGINT  NOT NULL DEFAULT 0,
    is_stream         INTEGER NOT NULL DEFAULT 0,
    ip                VARCHAR(64) NOT NULL DEFAULT '',
    group_name        VARCHAR(64) NOT NULL DEFAULT '',
    request_id        VARCHAR(64) NOT NULL DEFAULT '',
    other             TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX idx_logs_created ON logs (created_at);
CREATE INDEX idx_logs_user_created ON logs (user_id, created_at);
CREATE INDEX idx_logs_token ON logs (token_id);
CREATE INDEX idx_logs_request ON logs (request_id);
