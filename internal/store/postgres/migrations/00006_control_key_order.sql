-- The control record's primary key leads with item_id. Every statement of
-- the pump finds its records by key, several probes per item (the pending
-- anti-join, the claim's insert and conflict check, each status update),
-- and with item_type first each comparison in the index began with a text
-- comparison and then read item_id past a variable-length column, which
-- the index cannot do at a fixed offset. Leading with the bigint settles
-- almost every comparison on an integer: about 8 % of PostgreSQL's CPU per
-- item in the benchmark (bench/REPORT.md). The key's columns, its name and
-- what it makes unique are unchanged, so ON CONFLICT (item_type, item_id)
-- and every lookup by key read it as before. The statements still lock
-- records in (item_type, item_id) order, which is all that keeps them from
-- deadlocking; it need not be the index's order. The rebuild scans the
-- table once and holds off reads and writes to it meanwhile.

-- +goose Up
ALTER TABLE datapump_control
    DROP CONSTRAINT datapump_control_pkey,
    ADD CONSTRAINT datapump_control_pkey PRIMARY KEY (item_id, item_type);

-- +goose Down
ALTER TABLE datapump_control
    DROP CONSTRAINT datapump_control_pkey,
    ADD CONSTRAINT datapump_control_pkey PRIMARY KEY (item_type, item_id);
