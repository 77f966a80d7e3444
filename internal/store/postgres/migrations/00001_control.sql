-- Control records: one per work item, whose conditional transitions keep an
-- item from being published or delivered twice. Source tables are never
-- touched here.

-- +goose Up
CREATE TABLE IF NOT EXISTS datapump_control (
    item_type         text        NOT NULL,
    item_id           bigint      NOT NULL,
    biller_id         text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('New', 'Fetched', 'Queued', 'Processing', 'Processed', 'Failed', 'Skipped')),
    version           bigint      NOT NULL DEFAULT 1,
    attempts          integer     NOT NULL DEFAULT 0,
    owner             text        NOT NULL DEFAULT '',
    lease_until       timestamptz,
    next_attempt_at   timestamptz,
    origin            text        NOT NULL DEFAULT '',
    last_error        text        NOT NULL DEFAULT '',
    source_created_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    fetched_at        timestamptz,
    queued_at         timestamptz,
    processing_at     timestamptz,
    processed_at      timestamptz,
    failed_at         timestamptz,
    PRIMARY KEY (item_type, item_id)
);

-- The rescuer: Fetched/Queued records not updated for a while.
CREATE INDEX IF NOT EXISTS datapump_control_stuck_idx
    ON datapump_control (status, updated_at)
    WHERE status IN ('Fetched', 'Queued');

-- The rescuer: Processing records whose lease expired.
CREATE INDEX IF NOT EXISTS datapump_control_lease_idx
    ON datapump_control (lease_until)
    WHERE status = 'Processing';

-- Operators: backlog per biller and status.
CREATE INDEX IF NOT EXISTS datapump_control_biller_status_idx
    ON datapump_control (biller_id, status);

-- Leader election of the publisher.
CREATE TABLE IF NOT EXISTS datapump_lease (
    name       text        PRIMARY KEY,
    owner      text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE IF EXISTS datapump_lease;
DROP TABLE IF EXISTS datapump_control;
