-- Low watermarks of the pending scan: per biller and item type, a
-- created-at below which every source row (at or after cutover_at) has a
-- control record that is not New. The publisher's pending count moves it;
-- scans and claims start there, so their cost follows what is pending and
-- recent, not the history. Both times are datetime2(7), the precision the
-- scans compare source created-at values at: a watermark set to an item's
-- created-at is that created-at, never rounded past it. Biller ids and item
-- types compare exactly (binary collation), as in the other adapters.

-- +goose Up
CREATE TABLE {{schema}}.[datapump_watermark] (
    biller_id      nvarchar(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    item_type      nvarchar(64)  COLLATE Latin1_General_100_BIN2 NOT NULL,
    cutover_at     datetime2(7)  NOT NULL,
    low_created_at datetime2(7)  NOT NULL,
    updated_at     datetime2(3)  NOT NULL CONSTRAINT [DF_datapump_watermark_updated_at] DEFAULT (SYSUTCDATETIME()),
    CONSTRAINT [PK_datapump_watermark] PRIMARY KEY CLUSTERED (biller_id, item_type)
);

-- +goose Down
DROP TABLE {{schema}}.[datapump_watermark];
