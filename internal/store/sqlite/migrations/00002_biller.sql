-- The biller catalog: shard, toggle mode, cut-over watermark and CIS
-- endpoint. cutover_at and updated_at are unix milliseconds; cis_scopes is
-- the OAuth2 scope list separated by spaces; cis_timeout_ms is the request
-- timeout in milliseconds. Secrets are never stored, only the names of the
-- environment variables that hold them.

-- +goose Up
CREATE TABLE datapump_biller (
    id                    TEXT    NOT NULL PRIMARY KEY,
    name                  TEXT    NOT NULL DEFAULT '',
    shard                 TEXT    NOT NULL,
    mode                  TEXT    NOT NULL CHECK (mode IN ('off', 'poll', 'direct')),
    cutover_at            INTEGER,
    cis_base_url          TEXT    NOT NULL DEFAULT '',
    cis_auth              TEXT    NOT NULL DEFAULT '',
    cis_api_key_env       TEXT    NOT NULL DEFAULT '',
    cis_api_key_header    TEXT    NOT NULL DEFAULT '',
    cis_token_url         TEXT    NOT NULL DEFAULT '',
    cis_client_id         TEXT    NOT NULL DEFAULT '',
    cis_client_secret_env TEXT    NOT NULL DEFAULT '',
    cis_scopes            TEXT    NOT NULL DEFAULT '',
    cis_timeout_ms        INTEGER NOT NULL DEFAULT 0,
    cis_rate_per_second   REAL    NOT NULL DEFAULT 0,
    cis_max_concurrent    INTEGER NOT NULL DEFAULT 0,
    updated_at            INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX datapump_biller_shard_mode ON datapump_biller (shard, mode);

-- +goose Down
DROP TABLE datapump_biller;
