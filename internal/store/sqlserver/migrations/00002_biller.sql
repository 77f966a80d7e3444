-- The catalog of billers: shard, per-biller toggle, cut-over watermark and
-- CIS endpoint. Secrets are never stored, only the names of the environment
-- variables that hold them. The id compares and sorts exactly (binary
-- collation), as in the other adapters; cis_scopes is a JSON array.

-- +goose Up
CREATE TABLE {{schema}}.[datapump_biller] (
    id                    nvarchar(128)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    name                  nvarchar(256)  NOT NULL CONSTRAINT [DF_datapump_biller_name] DEFAULT (N''),
    shard                 nvarchar(128)  NOT NULL,
    mode                  nvarchar(16)   NOT NULL
        CONSTRAINT [CK_datapump_biller_mode] CHECK (mode IN (N'off', N'poll', N'direct')),
    cutover_at            datetime2(3)   NULL,
    cis_base_url          nvarchar(2048) NOT NULL CONSTRAINT [DF_datapump_biller_cis_base_url] DEFAULT (N''),
    cis_auth              nvarchar(32)   NOT NULL CONSTRAINT [DF_datapump_biller_cis_auth] DEFAULT (N''),
    cis_api_key_env       nvarchar(256)  NOT NULL CONSTRAINT [DF_datapump_biller_cis_api_key_env] DEFAULT (N''),
    cis_api_key_header    nvarchar(256)  NOT NULL CONSTRAINT [DF_datapump_biller_cis_api_key_header] DEFAULT (N''),
    cis_token_url         nvarchar(2048) NOT NULL CONSTRAINT [DF_datapump_biller_cis_token_url] DEFAULT (N''),
    cis_client_id         nvarchar(256)  NOT NULL CONSTRAINT [DF_datapump_biller_cis_client_id] DEFAULT (N''),
    cis_client_secret_env nvarchar(256)  NOT NULL CONSTRAINT [DF_datapump_biller_cis_client_secret_env] DEFAULT (N''),
    cis_scopes            nvarchar(max)  NOT NULL CONSTRAINT [DF_datapump_biller_cis_scopes] DEFAULT (N'[]'),
    cis_timeout_ms        bigint         NOT NULL CONSTRAINT [DF_datapump_biller_cis_timeout_ms] DEFAULT (0),
    cis_rate_per_second   float          NOT NULL CONSTRAINT [DF_datapump_biller_cis_rate_per_second] DEFAULT (0),
    cis_max_concurrent    int            NOT NULL CONSTRAINT [DF_datapump_biller_cis_max_concurrent] DEFAULT (0),
    updated_at            datetime2(3)   NOT NULL CONSTRAINT [DF_datapump_biller_updated_at] DEFAULT (SYSUTCDATETIME()),
    CONSTRAINT [PK_datapump_biller] PRIMARY KEY CLUSTERED (id)
);

-- +goose Down
DROP TABLE {{schema}}.[datapump_biller];
