-- The backlog count (ControlCountByStatus without WithProcessed), which
-- every pod's metrics refresher runs each publisher interval and the status
-- page on every load, reads only the records that are not Processed. A
-- filtered index of them keeps its cost to the backlog and operators'
-- actions rather than the history, and the Processed records, the bulk of
-- the table, leave it. It replaces the full (biller_id, status) index: a
-- count with Processed (datapump status) reads the table anyway.
--
-- The optimizer uses the index only for a query whose predicate implies the
-- filter at compile time, so the count spells status <> N'Processed' as a
-- literal (see countByStatusSQL). Creating a filtered index, like writing to
-- a table that has one, needs the SET options the adapter's sessionInit
-- gives every connection, goose's included (ANSI_NULLS, ANSI_PADDING,
-- ANSI_WARNINGS, ARITHABORT, CONCAT_NULL_YIELDS_NULL and QUOTED_IDENTIFIER
-- ON, NUMERIC_ROUNDABORT OFF); 00001's filtered indexes already do. The
-- build is offline (ONLINE needs Enterprise or Azure SQL): it scans the
-- table once and holds off writes to it meanwhile.

-- +goose Up
CREATE INDEX [IX_datapump_control_open_biller_status] ON {{schema}}.[datapump_control] (biller_id, status)
    WHERE status <> N'Processed';

DROP INDEX [IX_datapump_control_biller_status] ON {{schema}}.[datapump_control];

-- +goose Down
CREATE INDEX [IX_datapump_control_biller_status] ON {{schema}}.[datapump_control] (biller_id, status);

DROP INDEX [IX_datapump_control_open_biller_status] ON {{schema}}.[datapump_control];
