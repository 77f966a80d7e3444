-- The backlog count (ControlCountByStatus without WithProcessed), which
-- every pod's metrics refresher runs each publisher interval and the status
-- page on every load, reads only the records that are not Processed. A
-- partial index of them keeps its cost to the backlog and operators'
-- actions rather than the history, and the Processed records, the bulk of
-- the table, leave it. It replaces the full (biller_id, status) index: a
-- count with Processed (datapump status) reads the table anyway, and an
-- operator's list of one biller's records in open statuses can use the new
-- one. The count must filter on the constant status <> 'Processed' for the
-- planner to match the index; the lookups by key state their status
-- conditions so that it cannot (keyStatus, lockByKey), or it would scan the
-- index, nearly empty when the plan is cached, for one row of the backlog.
-- The build scans the table once and holds off writes to it meanwhile, as
-- 00003's did.

-- +goose Up
CREATE INDEX IF NOT EXISTS datapump_control_open_biller_status_idx
    ON datapump_control (biller_id, status)
    WHERE status <> 'Processed';

DROP INDEX IF EXISTS datapump_control_biller_status_idx;

-- +goose Down
CREATE INDEX IF NOT EXISTS datapump_control_biller_status_idx
    ON datapump_control (biller_id, status);

DROP INDEX IF EXISTS datapump_control_open_biller_status_idx;
