-- Operators retry Failed records by biller, item type and failed-at range
-- (datapump retry); Failed records are few beside Processed ones, so a
-- partial index keeps the search off the whole control table.

-- +goose Up
CREATE INDEX IF NOT EXISTS datapump_control_failed_idx
    ON datapump_control (failed_at)
    WHERE status = 'Failed';

-- +goose Down
DROP INDEX IF EXISTS datapump_control_failed_idx;
