-- The catalog of billers: shard, per-biller toggle, cut-over watermark and
-- CIS endpoint. Secrets are never stored, only the names of the environment
-- variables that hold them.

-- +goose Up
CREATE TABLE IF NOT EXISTS datapump_biller (
    id                    text             PRIMARY KEY,
    name                  text             NOT NULL DEFAULT '',
    shard                 text             NOT NULL,
    mode                  text             NOT NULL CHECK (mode IN ('off', 'poll', 'direct')),
    cutover_at            timestamptz,
    cis_base_url          text             NOT NULL DEFAULT '',
    cis_auth              text             NOT NULL DEFAULT '',
    cis_api_key_env       text             NOT NULL DEFAULT '',
    cis_api_key_header    text             NOT NULL DEFAULT '',
    cis_token_url         text             NOT NULL DEFAULT '',
    cis_client_id         text             NOT NULL DEFAULT '',
    cis_client_secret_env text             NOT NULL DEFAULT '',
    cis_scopes            text[]           NOT NULL DEFAULT '{}',
    cis_timeout_ms        bigint           NOT NULL DEFAULT 0,
    cis_rate_per_second   double precision NOT NULL DEFAULT 0,
    cis_max_concurrent    integer          NOT NULL DEFAULT 0,
    updated_at            timestamptz      NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE IF EXISTS datapump_biller;
