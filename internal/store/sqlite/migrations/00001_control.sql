-- Control records: one per work item, the pump's own state. Times are
-- INTEGER unix milliseconds taken from the database clock.

-- +goose Up
CREATE TABLE datapump_control (
    item_type         TEXT    NOT NULL,
    item_id           INTEGER NOT NULL,
    biller_id         TEXT    NOT NULL,
    status            TEXT    NOT NULL
        CHECK (status IN ('New', 'Fetched', 'Queued', 'Processing', 'Processed', 'Failed', 'Skipped')),
    version           INTEGER NOT NULL DEFAULT 1,
    attempts          INTEGER NOT NULL DEFAULT 0,
    owner             TEXT    NOT NULL DEFAULT '',
    lease_until       INTEGER,
    next_attempt_at   INTEGER,
    origin            TEXT    NOT NULL DEFAULT 'poll',
    last_error        TEXT    NOT NULL DEFAULT '',
    source_created_at INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    fetched_at        INTEGER,
    queued_at         INTEGER,
    processing_at     INTEGER,
    processed_at      INTEGER,
    failed_at         INTEGER,
    PRIMARY KEY (item_type, item_id)
) WITHOUT ROWID;

-- The rescuer: Fetched/Queued records not updated for a while.
CREATE INDEX datapump_control_status_updated ON datapump_control (status, updated_at);
-- The reclaimer: Processing records whose lease has expired.
CREATE INDEX datapump_control_status_lease ON datapump_control (status, lease_until);
-- Backlog per biller and status (datapump status, metrics).
CREATE INDEX datapump_control_biller_status ON datapump_control (biller_id, status);

-- Named leases for leader election (the publisher).
CREATE TABLE datapump_lease (
    name       TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);

-- +goose Down
DROP TABLE datapump_lease;
DROP TABLE datapump_control;
