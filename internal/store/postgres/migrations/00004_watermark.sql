-- Low watermarks of the pending scan: per biller and item type, a
-- created-at below which every source row (at or after cutover_at) has a
-- control record that is not New. The publisher's pending count moves it;
-- scans and claims start there, so their cost follows what is pending and
-- recent, not the history.

-- +goose Up
CREATE TABLE IF NOT EXISTS datapump_watermark (
    biller_id      text        NOT NULL,
    item_type      text        NOT NULL,
    cutover_at     timestamptz NOT NULL,
    low_created_at timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (biller_id, item_type)
);

-- +goose Down
DROP TABLE IF EXISTS datapump_watermark;
