-- The backlog count (ControlCountByStatus without WithProcessed), which the
-- metrics refresher runs each publisher interval and the status page on
-- every load, reads only the records that are not Processed. A partial
-- index of them keeps its cost to the backlog and operators' actions rather
-- than the history, and the Processed records, the bulk of the table, leave
-- it. It replaces the full (biller_id, status) index: a count with
-- Processed (datapump status) reads the table anyway. SQLite uses a partial
-- index only for a query whose WHERE carries the index's term as written,
-- so the count filters on status <> 'Processed' exactly.

-- +goose Up
CREATE INDEX IF NOT EXISTS datapump_control_open_biller_status ON datapump_control (biller_id, status)
    WHERE status <> 'Processed';
DROP INDEX IF EXISTS datapump_control_biller_status;

-- +goose Down
CREATE INDEX IF NOT EXISTS datapump_control_biller_status ON datapump_control (biller_id, status);
DROP INDEX IF EXISTS datapump_control_open_biller_status;
