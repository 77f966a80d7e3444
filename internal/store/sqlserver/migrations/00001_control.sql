-- Control records: one per work item, whose conditional transitions keep an
-- item from being published or delivered twice; and the publisher's lease.
-- Times are datetime2(3), UTC, from the database clock (SYSUTCDATETIME()).
-- Table names are qualified with the configured schema, filled in (quoted)
-- before goose reads this file. Source tables are never touched here.

-- +goose Up
CREATE TABLE {{schema}}.[datapump_control] (
    item_type         nvarchar(64)  NOT NULL,
    item_id           bigint        NOT NULL,
    biller_id         nvarchar(128) NOT NULL,
    status            nvarchar(16)  NOT NULL
        CONSTRAINT [CK_datapump_control_status]
        CHECK (status IN (N'New', N'Fetched', N'Queued', N'Processing', N'Processed', N'Failed', N'Skipped')),
    version           bigint        NOT NULL CONSTRAINT [DF_datapump_control_version] DEFAULT (1),
    attempts          int           NOT NULL CONSTRAINT [DF_datapump_control_attempts] DEFAULT (0),
    owner             nvarchar(256) NOT NULL CONSTRAINT [DF_datapump_control_owner] DEFAULT (N''),
    lease_until       datetime2(3)  NULL,
    next_attempt_at   datetime2(3)  NULL,
    origin            nvarchar(16)  NOT NULL CONSTRAINT [DF_datapump_control_origin] DEFAULT (N''),
    last_error        nvarchar(max) NOT NULL CONSTRAINT [DF_datapump_control_last_error] DEFAULT (N''),
    source_created_at datetime2(3)  NULL,
    created_at        datetime2(3)  NOT NULL CONSTRAINT [DF_datapump_control_created_at] DEFAULT (SYSUTCDATETIME()),
    updated_at        datetime2(3)  NOT NULL CONSTRAINT [DF_datapump_control_updated_at] DEFAULT (SYSUTCDATETIME()),
    fetched_at        datetime2(3)  NULL,
    queued_at         datetime2(3)  NULL,
    processing_at     datetime2(3)  NULL,
    processed_at      datetime2(3)  NULL,
    failed_at         datetime2(3)  NULL,
    -- Clustered on the item key: the pending anti-join (NOT EXISTS … WHERE
    -- item_type = @t AND item_id = s.id), every claim and every fenced
    -- update are single-key seeks that lock one key.
    CONSTRAINT [PK_datapump_control] PRIMARY KEY CLUSTERED (item_type, item_id)
);

-- The rescuer (ControlListStuck): Fetched/Queued records by last update.
-- Filtered to the rows in flight, so it stays small however long the
-- history grows, and the UPDLOCK/READPAST scan seeks it and locks only the
-- rows it returns instead of escalating to a table lock over the history.
CREATE INDEX [IX_datapump_control_stuck] ON {{schema}}.[datapump_control] (updated_at)
    INCLUDE (status, next_attempt_at)
    WHERE status IN (N'Fetched', N'Queued');

-- The reclaimer (ControlReclaimExpired): Processing records by lease end.
CREATE INDEX [IX_datapump_control_lease] ON {{schema}}.[datapump_control] (lease_until)
    INCLUDE (status)
    WHERE status = N'Processing';

-- Operators' retry (ControlRetry): Failed records by failure time.
CREATE INDEX [IX_datapump_control_failed] ON {{schema}}.[datapump_control] (failed_at)
    INCLUDE (status, biller_id)
    WHERE status = N'Failed';

-- Operators: backlog per biller and status.
CREATE INDEX [IX_datapump_control_biller_status] ON {{schema}}.[datapump_control] (biller_id, status);

-- Leader election of the publisher. Names and owners compare exactly
-- (binary collation), as in the other adapters.
CREATE TABLE {{schema}}.[datapump_lease] (
    name       nvarchar(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    owner      nvarchar(256) COLLATE Latin1_General_100_BIN2 NOT NULL,
    expires_at datetime2(3)  NOT NULL,
    CONSTRAINT [PK_datapump_lease] PRIMARY KEY CLUSTERED (name)
);

-- +goose Down
DROP TABLE {{schema}}.[datapump_lease];
DROP TABLE {{schema}}.[datapump_control];
