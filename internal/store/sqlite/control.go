package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlrows"
)

// defaultLimit bounds list queries whose Limit is zero.
const defaultLimit = 100

// controlColumns are the columns scanControl reads, in order.
const controlColumns = `item_type, item_id, biller_id, status, version, attempts, owner,
    lease_until, next_attempt_at, origin, last_error, source_created_at,
    created_at, updated_at, fetched_at, queued_at, processing_at, processed_at, failed_at`

type scanner interface{ Scan(dest ...any) error }

func scanControl(row scanner) (store.Control, error) {
	var (
		c                                                store.Control
		status                                           string
		lease, next, srcCreated, created, updated        sql.NullInt64
		fetched, queued, processing, processed, failedAt sql.NullInt64
	)
	err := row.Scan(&c.ItemType, &c.ItemID, &c.BillerID, &status, &c.Version, &c.Attempts, &c.Owner,
		&lease, &next, &c.Origin, &c.LastError, &srcCreated,
		&created, &updated, &fetched, &queued, &processing, &processed, &failedAt)
	if err != nil {
		return store.Control{}, err
	}
	c.Status = store.Status(status)
	c.LeaseUntil, c.NextAttemptAt, c.SourceCreatedAt = msTime(lease), msTime(next), msTime(srcCreated)
	c.CreatedAt, c.UpdatedAt = msTime(created), msTime(updated)
	c.FetchedAt, c.QueuedAt, c.ProcessingAt = msTime(fetched), msTime(queued), msTime(processing)
	c.ProcessedAt, c.FailedAt = msTime(processed), msTime(failedAt)
	return c, nil
}

func scanControls(rows *sql.Rows) ([]store.Control, error) {
	defer rows.Close()
	var out []store.Control
	for rows.Next() {
		c, err := scanControl(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// fencedJSON encodes fenced records as a JSON array of [type, id, version]
// for json_each.
func fencedJSON(items []store.Fenced) (string, error) {
	rows := make([][3]any, len(items))
	for i, f := range items {
		rows[i] = [3]any{f.ItemType, f.ItemID, f.Version}
	}
	b, err := json.Marshal(rows)
	return string(b), err
}

// markQueuedSQL drives the update from the JSON list through the primary
// key; the unary + on status keeps the planner from scanning every Fetched
// record through the status index instead. The biller consumer's claim
// ends here, so the owner is cleared, as in the other adapters.
const markQueuedSQL = `UPDATE datapump_control
SET status = 'Queued', version = version + 1, owner = '', queued_at = ` + nowMS + `, updated_at = ` + nowMS + `
FROM (SELECT json_extract(value, '$[0]') AS t, json_extract(value, '$[1]') AS i, json_extract(value, '$[2]') AS v
    FROM json_each(:items)) AS f
WHERE item_type = f.t AND item_id = f.i AND version = f.v AND +status = 'Fetched'`

// ControlMarkQueued moves each record Fetched → Queued (owner cleared) if
// it is still Fetched at the given version, in one statement; it returns
// how many moved.
func (s *Store) ControlMarkQueued(ctx context.Context, items []store.Fenced) (int, error) {
	if len(items) == 0 {
		return 0, nil
	}
	j, err := fencedJSON(items)
	if err != nil {
		return 0, fmt.Errorf("mark queued: %w", err)
	}
	var n int64
	err = s.inWrite(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, markQueuedSQL, sql.Named("items", j))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("mark queued: %w", err)
	}
	return int(n), nil
}

// fencedUpdate runs a conditional update of one Processing record at its
// version in its own BEGIN IMMEDIATE transaction and reports whether it
// changed.
func (s *Store) fencedUpdate(ctx context.Context, query string, f store.Fenced, args ...any) (bool, error) {
	var ok bool
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		var err error
		ok, err = fencedExec(ctx, tx, query, f, args...)
		return err
	})
	return ok, err
}

// fencedExec runs a conditional update of one Processing record at its
// version inside tx and reports whether it changed.
func fencedExec(ctx context.Context, tx *sql.Tx, query string, f store.Fenced, args ...any) (bool, error) {
	args = append(args, sql.Named("type", f.ItemType), sql.Named("id", f.ItemID), sql.Named("version", f.Version))
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// whereHeld is the fencing condition of every update by a claim holder.
const whereHeld = ` WHERE item_type = :type AND item_id = :id AND version = :version AND status = 'Processing'`

const extendLeaseSQL = `UPDATE datapump_control SET lease_until = ` + nowMS + ` + :lease, updated_at = ` + nowMS + whereHeld

// ControlExtendLease pushes the lease of a Processing record forward. It is
// not a transition: the version stays, so the holder keeps fencing with it.
func (s *Store) ControlExtendLease(ctx context.Context, f store.Fenced, lease time.Duration) (bool, error) {
	ok, err := s.fencedUpdate(ctx, extendLeaseSQL, f, sql.Named("lease", durationMS(lease)))
	if err != nil {
		return false, fmt.Errorf("extend lease %s: %w", f.ItemKey, err)
	}
	return ok, nil
}

// finishSQL ends a held claim. The owner stays, naming the worker that
// finished it; the last error is replaced only by a non-empty one, so a
// Processed finish keeps the error of the attempt before; the time of the
// other end is cleared (a retried Failed record that is then Processed has
// no failed-at), as in the other adapters.
const finishSQL = `UPDATE datapump_control SET
    status = :status, version = version + 1, lease_until = NULL,
    last_error = CASE WHEN :error <> '' THEN :error ELSE last_error END,
    processed_at = CASE WHEN :status = 'Processed' THEN ` + nowMS + ` END,
    failed_at = CASE WHEN :status = 'Failed' THEN ` + nowMS + ` END,
    updated_at = ` + nowMS + whereHeld

// ControlFinish ends a claim as Processed or Failed; false means the caller
// no longer held it and nothing changed.
func (s *Store) ControlFinish(ctx context.Context, p store.ControlFinishParams) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	var ok bool
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		var err error
		ok, err = finish(ctx, tx, p)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("finish %s: %w", p.ItemKey, err)
	}
	return ok, nil
}

// finish ends one claim inside tx: ControlFinish runs it alone,
// ControlFinishBatch once per claim in one transaction.
func finish(ctx context.Context, tx *sql.Tx, p store.ControlFinishParams) (bool, error) {
	return fencedExec(ctx, tx, finishSQL, p.Fenced, sql.Named("status", string(p.Status)), sql.Named("error", p.Error))
}

const releaseSQL = `UPDATE datapump_control SET
    status = 'Queued', version = version + 1, attempts = attempts + 1, owner = '', lease_until = NULL,
    last_error = :error, next_attempt_at = ` + nowMS + ` + :retry_in,
    queued_at = ` + nowMS + `, updated_at = ` + nowMS + whereHeld

// ControlRelease returns a claim for a later retry: Processing → Queued,
// attempts+1, next attempt at the database's now + RetryIn.
func (s *Store) ControlRelease(ctx context.Context, p store.ControlReleaseParams) (bool, error) {
	ok, err := s.fencedUpdate(ctx, releaseSQL, p.Fenced, sql.Named("error", p.Error), sql.Named("retry_in", durationMS(p.RetryIn)))
	if err != nil {
		return false, fmt.Errorf("release %s: %w", p.ItemKey, err)
	}
	return ok, nil
}

const skipSQL = `UPDATE datapump_control SET
    status = 'Skipped', version = version + 1, owner = '', last_error = :reason, updated_at = ` + nowMS + `
WHERE item_type = :type AND item_id = :id AND status IN ('New', 'Fetched', 'Queued')`

// ControlSkip marks a New, Fetched or Queued record Skipped with the reason
// as its last error; false if there is no such record.
func (s *Store) ControlSkip(ctx context.Context, key store.ItemKey, reason string) (bool, error) {
	var n int64
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, skipSQL, sql.Named("type", key.ItemType), sql.Named("id", key.ItemID), sql.Named("reason", reason))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("skip %s: %w", key, err)
	}
	return n == 1, nil
}

const listStuckSQL = `SELECT ` + controlColumns + ` FROM datapump_control
WHERE status IN ('Fetched', 'Queued') AND updated_at <= :now - :older_than
  AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
ORDER BY updated_at, item_type, item_id LIMIT :limit`

const bumpSQL = `UPDATE datapump_control SET updated_at = :now
WHERE (item_type, item_id) IN (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:items))`

// ControlListStuck lists Fetched/Queued records not updated for OlderThan
// (by the database clock) whose retry time has come, oldest first, and bumps
// their updated-at (not their version) so the next call skips them until
// OlderThan has passed again. The records are returned as they are after
// the bump, in the order they were found.
func (s *Store) ControlListStuck(ctx context.Context, p store.ControlListStuckParams) ([]store.Control, error) {
	var out []store.Control
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		now, err := txNow(ctx, tx)
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, listStuckSQL, sql.Named("now", now),
			sql.Named("older_than", durationMS(p.OlderThan)), sql.Named("limit", limitOr(p.Limit)))
		if err != nil {
			return err
		}
		if out, err = scanControls(rows); err != nil || len(out) == 0 {
			return err
		}
		keys := make([]store.Fenced, len(out))
		for i, c := range out {
			keys[i] = store.Fenced{ItemKey: c.ItemKey}
		}
		j, err := fencedJSON(keys)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, bumpSQL, sql.Named("now", now), sql.Named("items", j)); err != nil {
			return err
		}
		// The bump wrote updated_at alone, in this transaction.
		for i := range out {
			out[i].UpdatedAt = time.UnixMilli(now).UTC()
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	return out, nil
}

const reclaimExpiredSQL = `UPDATE datapump_control SET
    status = 'Queued', version = version + 1, attempts = attempts + 1, owner = '', lease_until = NULL,
    next_attempt_at = NULL, last_error = 'lease of ' || owner || ' expired', queued_at = :now, updated_at = :now
WHERE (item_type, item_id) IN (
    SELECT item_type, item_id FROM datapump_control
    WHERE status = 'Processing' AND lease_until <= :now
    ORDER BY lease_until LIMIT :limit)
RETURNING ` + controlColumns

// ControlReclaimExpired moves Processing records whose lease has expired
// back to Queued (attempts+1, owner cleared, last error "lease of <owner>
// expired", naming the owner whose lease it was) and returns them as they
// are now.
func (s *Store) ControlReclaimExpired(ctx context.Context, p store.ControlReclaimExpiredParams) ([]store.Control, error) {
	var out []store.Control
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		now, err := txNow(ctx, tx)
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, reclaimExpiredSQL, sql.Named("now", now), sql.Named("limit", limitOr(p.Limit)))
		if err != nil {
			return err
		}
		out, err = scanControls(rows)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reclaim expired leases: %w", err)
	}
	return out, nil
}

// ControlGet reads one control record; store.ErrNotFound if absent.
func (s *Store) ControlGet(ctx context.Context, key store.ItemKey) (store.Control, error) {
	c, err := scanControl(s.read.QueryRowContext(ctx,
		`SELECT `+controlColumns+` FROM datapump_control WHERE item_type = :type AND item_id = :id`,
		sql.Named("type", key.ItemType), sql.Named("id", key.ItemID)))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Control{}, fmt.Errorf("control record %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return store.Control{}, fmt.Errorf("control record %s: %w", key, err)
	}
	return c, nil
}

// ControlList lists control records for operators, newest first (by
// created-at, then item type, then id, all descending, as in the other
// adapters); a zero Limit means 100.
func (s *Store) ControlList(ctx context.Context, p store.ControlListParams) ([]store.Control, error) {
	var where []string
	args := []any{sql.Named("limit", limitOr(p.Limit))}
	if p.BillerID != "" {
		where = append(where, "biller_id = :biller")
		args = append(args, sql.Named("biller", p.BillerID))
	}
	if p.ItemType != "" {
		where = append(where, "item_type = :type")
		args = append(args, sql.Named("type", p.ItemType))
	}
	if len(p.Statuses) > 0 {
		b, err := json.Marshal(p.Statuses)
		if err != nil {
			return nil, fmt.Errorf("list control records: %w", err)
		}
		where = append(where, "status IN (SELECT value FROM json_each(:statuses))")
		args = append(args, sql.Named("statuses", string(b)))
	}
	q := `SELECT ` + controlColumns + ` FROM datapump_control`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created_at DESC, item_type DESC, item_id DESC LIMIT :limit`
	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list control records: %w", err)
	}
	out, err := scanControls(rows)
	if err != nil {
		return nil, fmt.Errorf("list control records: %w", err)
	}
	return out, nil
}

// countByStatusSQL counts records per biller and status, in pipeline order
// of the status (the statuses are the port's constants, not input).
// Without Processed records it filters on status <> 'Processed' exactly as
// the partial index datapump_control_open_biller_status (migration 00005)
// is defined, the only form SQLite matches it with, and reads the open
// records from that covering index; with them it reads the table.
func countByStatusSQL(withProcessed bool) string {
	var order strings.Builder
	for i, st := range store.Statuses {
		fmt.Fprintf(&order, " WHEN '%s' THEN %d", st, i)
	}
	where := ` WHERE status <> 'Processed'`
	if withProcessed {
		where = ``
	}
	return `SELECT biller_id, status, COUNT(*) FROM datapump_control` + where + `
GROUP BY biller_id, status
ORDER BY biller_id, CASE status` + order.String() + ` END, status`
}

// ControlCountByStatus counts records per biller and status, ordered by
// biller and then pipeline order of the status; Processed records only
// WithProcessed.
func (s *Store) ControlCountByStatus(ctx context.Context, p store.ControlCountParams) ([]store.StatusCount, error) {
	rows, err := s.read.QueryContext(ctx, countByStatusSQL(p.WithProcessed))
	if err != nil {
		return nil, fmt.Errorf("count control records: %w", err)
	}
	return sqlrows.StatusCounts(rows)
}

// txNow reads the database clock in unix milliseconds inside tx.
func txNow(ctx context.Context, tx *sql.Tx) (int64, error) {
	var now int64
	if err := tx.QueryRowContext(ctx, `SELECT `+nowMS).Scan(&now); err != nil {
		return 0, fmt.Errorf("read database clock: %w", err)
	}
	return now, nil
}

func limitOr(n int) int {
	if n <= 0 {
		return defaultLimit
	}
	return n
}

// retryFilter builds the WHERE clause selecting the Failed records a retry
// names, and its parameters.
func retryFilter(p store.ControlRetryParams) (string, []any, error) {
	// With keys, the unary + keeps the planner on the primary key rather
	// than walking every Failed record through the status index.
	status := "status = 'Failed'"
	if len(p.Keys) > 0 {
		status = "+" + status
	}
	where := []string{status}
	var args []any
	if p.BillerID != "" {
		where = append(where, "biller_id = :biller")
		args = append(args, sql.Named("biller", p.BillerID))
	}
	if p.ItemType != "" {
		where = append(where, "item_type = :type")
		args = append(args, sql.Named("type", p.ItemType))
	}
	if !p.FailedFrom.IsZero() {
		where = append(where, "failed_at >= :failed_from")
		args = append(args, sql.Named("failed_from", ceilMS(p.FailedFrom)))
	}
	if !p.FailedTo.IsZero() {
		where = append(where, "failed_at < :failed_to")
		args = append(args, sql.Named("failed_to", ceilMS(p.FailedTo)))
	}
	if len(p.Keys) > 0 {
		keys := make([]store.Fenced, len(p.Keys))
		for i, k := range p.Keys {
			keys[i] = store.Fenced{ItemKey: k}
		}
		j, err := fencedJSON(keys)
		if err != nil {
			return "", nil, err
		}
		where = append(where, `(item_type, item_id) IN (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:keys))`)
		args = append(args, sql.Named("keys", j))
	}
	limit := -1 // no limit
	if p.Limit > 0 {
		limit = p.Limit
	}
	args = append(args, sql.Named("limit", limit))
	return strings.Join(where, " AND "), args, nil
}

// ceilMS is t in unix milliseconds rounded up, so that for the whole
// milliseconds stored, ">= ceilMS(t)" is ">= t" and "< ceilMS(t)" is "< t".
func ceilMS(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// retryOrder is the order of a retry's records: oldest failure first.
const retryOrder = ` ORDER BY failed_at, item_type, item_id LIMIT :limit`

// retrySQL moves the chosen Failed records to Queued, found by primary key;
// the outer status condition keeps the move conditional on the record
// still being Failed.
const retrySQL = `UPDATE datapump_control SET
    status = 'Queued', version = version + 1, attempts = 0, owner = '', lease_until = NULL,
    next_attempt_at = NULL, queued_at = :now, updated_at = :now
WHERE (item_type, item_id) IN (SELECT item_type, item_id FROM datapump_control WHERE %s` + retryOrder + `)
  AND +status = 'Failed'
RETURNING ` + controlColumns

// ControlRetry moves Failed records matching the filter back to Queued
// (attempts reset to 0, no owner, lease or retry delay, version+1, last
// error kept) in one BEGIN IMMEDIATE transaction, oldest failure first up to
// Limit (zero: no limit), and returns them as they now are. With DryRun it
// only reads, and returns the records that would move as they stand.
func (s *Store) ControlRetry(ctx context.Context, p store.ControlRetryParams) ([]store.Control, error) {
	where, args, err := retryFilter(p)
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	if p.DryRun {
		rows, err := s.read.QueryContext(ctx, `SELECT `+controlColumns+` FROM datapump_control WHERE `+where+retryOrder, args...)
		if err != nil {
			return nil, fmt.Errorf("retry (dry run): %w", err)
		}
		out, err := scanControls(rows)
		if err != nil {
			return nil, fmt.Errorf("retry (dry run): %w", err)
		}
		return out, nil
	}
	var out []store.Control
	err = s.inWrite(ctx, func(tx *sql.Tx) error {
		now, err := txNow(ctx, tx)
		if err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, fmt.Sprintf(retrySQL, where), append(args, sql.Named("now", now))...)
		if err != nil {
			return err
		}
		out, err = scanControls(rows)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	// RETURNING has no order of its own.
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.FailedAt.Equal(b.FailedAt) {
			return a.FailedAt.Before(b.FailedAt)
		}
		if a.ItemType != b.ItemType {
			return a.ItemType < b.ItemType
		}
		return a.ItemID < b.ItemID
	})
	return out, nil
}
