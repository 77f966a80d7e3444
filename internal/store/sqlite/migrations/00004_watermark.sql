-- Low watermarks of the pending scan: per biller and item type, a
-- created-at below which every source row (at or after cutover_at) has a
-- control record that is not New. The publisher's pending count moves it;
-- scans and claims start there, so their cost follows what is pending and
-- recent, not the history. cutover_at and low_created_at are positions in
-- the source tables' created-at text (UTC 'YYYY-MM-DD HH:MM:SS.SSS', '' for
-- no cut-over), so the scans compare them with created-at values as a text
-- range on the (biller, created_at) index; updated_at is unix milliseconds.

-- +goose Up
CREATE TABLE datapump_watermark (
    biller_id      TEXT    NOT NULL,
    item_type      TEXT    NOT NULL,
    cutover_at     TEXT    NOT NULL,
    low_created_at TEXT    NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (biller_id, item_type)
) WITHOUT ROWID;

-- +goose Down
DROP TABLE datapump_watermark;
