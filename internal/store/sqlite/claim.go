package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlrows"
)

// billersJSON encodes billers and their cut-overs as a JSON array of
// [biller_id, cutover] pairs for json_each, each biller once.
func billersJSON(billers []store.BillerCutover) (string, error) {
	pairs := make([][2]string, 0, len(billers))
	seen := map[string]bool{}
	for _, b := range billers {
		if seen[b.BillerID] {
			continue
		}
		seen[b.BillerID] = true
		pairs = append(pairs, [2]string{b.BillerID, sourceTimeArg(b.CutoverAt)})
	}
	j, err := json.Marshal(pairs)
	return string(j), err
}

// PendingCount counts pending items per biller (no control record, or one
// in New; created at or after the biller's cut-over) and finds the oldest
// one's created-at, with one query over every item type that reads each
// (biller, item type) from its watermark, or from the cut-over when Full or
// that is later. Billers without pending items are left out. A read-only
// count runs on the read pool; with a WatermarkLag the scan and the move of
// the scanned watermarks run in one BEGIN IMMEDIATE transaction.
func (s *Store) PendingCount(ctx context.Context, p store.PendingCountParams) ([]store.BillerPending, error) {
	if len(p.Billers) == 0 || len(s.sources.order) == 0 {
		return nil, nil
	}
	if p.WatermarkLag < 0 {
		return nil, fmt.Errorf("pending count: watermark_lag: %s must not be negative", p.WatermarkLag)
	}
	billers, err := billersJSON(p.Billers)
	if err != nil {
		return nil, fmt.Errorf("pending count: %w", err)
	}
	args := append([]any{sql.Named("billers", billers), sql.Named("full", p.Full)}, s.sources.args...)
	var scanned []typePending
	if p.WatermarkLag == 0 {
		scanned, err = s.scanPending(ctx, s.read, args)
	} else {
		err = s.inWrite(ctx, func(tx *sql.Tx) error {
			if scanned, err = s.scanPending(ctx, tx, args); err != nil {
				return err
			}
			return advanceWatermarks(ctx, tx, scanned, p.WatermarkLag)
		})
	}
	if err != nil {
		return nil, fmt.Errorf("pending count: %w", err)
	}
	return perBiller(scanned)
}

// typePending is one (biller, item type) row of the pending scan: the
// cut-over it ran under, as passed, and the oldest pending created-at as
// the source holds it (NULL without pending items).
type typePending struct {
	billerID, itemType, cutover string
	pending                     int64
	oldest                      sql.NullString
}

// scanPending runs the pending count on q, ordered by biller.
func (s *Store) scanPending(ctx context.Context, q queryer, args []any) ([]typePending, error) {
	rows, err := q.QueryContext(ctx, s.sources.pendingCount, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []typePending
	for rows.Next() {
		var tp typePending
		if err := rows.Scan(&tp.billerID, &tp.itemType, &tp.cutover, &tp.pending, &tp.oldest); err != nil {
			return nil, err
		}
		out = append(out, tp)
	}
	return out, rows.Err()
}

// perBiller sums the scan of each biller over its item types, keeping the
// billers with pending items, in the scan's order.
func perBiller(scanned []typePending) ([]store.BillerPending, error) {
	var out []store.BillerPending
	for _, tp := range scanned {
		if tp.pending == 0 {
			continue
		}
		oldest, err := parseSourceTime(tp.oldest.String)
		if err != nil {
			return nil, fmt.Errorf("pending count of biller %s: %w", tp.billerID, err)
		}
		if n := len(out); n > 0 && out[n-1].BillerID == tp.billerID {
			out[n-1].Pending += tp.pending
			if oldest.Before(out[n-1].OldestCreatedAt) {
				out[n-1].OldestCreatedAt = oldest
			}
			continue
		}
		out = append(out, store.BillerPending{BillerID: tp.billerID, Pending: tp.pending, OldestCreatedAt: oldest})
	}
	return out, nil
}

// advanceWatermarksSQL moves the watermark of each scanned (biller, item
// type) in :scanned, a JSON array of [biller_id, item_type, cutover,
// oldest] (oldest null without pending items), to its oldest pending
// created-at or to :before, whichever is earlier, and records the cut-over
// it was computed under. min() of a NULL is NULL, hence the COALESCE.
const advanceWatermarksSQL = `INSERT INTO datapump_watermark (biller_id, item_type, cutover_at, low_created_at, updated_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
    COALESCE(min(json_extract(value, '$[3]'), :before), :before), :now
FROM json_each(:scanned)
WHERE true
ON CONFLICT (biller_id, item_type) DO UPDATE SET
    cutover_at = excluded.cutover_at, low_created_at = excluded.low_created_at, updated_at = excluded.updated_at`

// advanceWatermarks moves the scanned watermarks to lag before the
// database clock, or to the oldest pending item when that is earlier.
func advanceWatermarks(ctx context.Context, tx *sql.Tx, scanned []typePending, lag time.Duration) error {
	rows := make([][4]any, len(scanned))
	for i, tp := range scanned {
		var oldest any
		if tp.oldest.Valid {
			oldest = tp.oldest.String
		}
		rows[i] = [4]any{tp.billerID, tp.itemType, tp.cutover, oldest}
	}
	j, err := json.Marshal(rows)
	if err != nil {
		return fmt.Errorf("advance watermarks: %w", err)
	}
	now, err := txNow(ctx, tx)
	if err != nil {
		return err
	}
	before := sourceTimeArg(time.UnixMilli(max(now-durationMS(lag), 0)).UTC())
	if _, err := tx.ExecContext(ctx, advanceWatermarksSQL,
		sql.Named("scanned", string(j)), sql.Named("before", before), sql.Named("now", now)); err != nil {
		return fmt.Errorf("advance watermarks: %w", err)
	}
	return nil
}

// PendingList lists the oldest Limit pending items (no control record, or
// one in New) of the given billers, created at or after their watermark
// and cut-over and at least OlderThan before the database clock, oldest
// first (then item type, then id), in one query; a zero Limit means 100.
func (s *Store) PendingList(ctx context.Context, p store.PendingListParams) ([]store.SourceRow, error) {
	if len(p.Billers) == 0 || len(s.sources.order) == 0 {
		return nil, nil
	}
	billers, err := billersJSON(p.Billers)
	if err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	args := append([]any{
		sql.Named("billers", billers), sql.Named("older_than", durationMS(p.OlderThan)), sql.Named("limit", limitOr(p.Limit)),
	}, s.sources.args...)
	rows, err := s.read.QueryContext(ctx, s.sources.pendingList, args...)
	if err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	defer rows.Close()
	var out []store.SourceRow
	for rows.Next() {
		var r store.SourceRow
		var biller, created any
		if err := rows.Scan(&r.ItemType, &r.ItemID, &biller, &created); err != nil {
			return nil, fmt.Errorf("pending list: %w", err)
		}
		r.BillerID = fmt.Sprint(biller)
		if r.CreatedAt, err = parseSourceTime(created); err != nil {
			return nil, fmt.Errorf("pending list: source row %s: %w", r.ItemKey, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	return out, nil
}

// ControlClaimPending claims up to Limit pending items of one biller in one
// BEGIN IMMEDIATE transaction and one statement: the oldest by source
// created-at, then item type, then id, from the latest of the cut-over,
// From and the item type's watermark; records are inserted as Fetched
// (origin "poll") or moved New → Fetched. The items come back in that order.
func (s *Store) ControlClaimPending(ctx context.Context, p store.ControlClaimPendingParams) ([]store.Claimed, error) {
	if p.Limit <= 0 || len(s.sources.order) == 0 {
		return nil, nil
	}
	args := append([]any{
		sql.Named("biller", p.BillerID), sql.Named("owner", p.Owner),
		sql.Named("cutover", sourceTimeArg(p.CutoverAt)), sql.Named("from", sourceTimeArg(p.From)),
		sql.Named("limit", p.Limit),
	}, s.sources.args...)
	var out []store.Claimed
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, s.sources.claimPending, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c store.Claimed
			var created sql.NullInt64
			if err := rows.Scan(&c.ItemType, &c.ItemID, &c.BillerID, &c.Version, &c.Attempts, &created); err != nil {
				return err
			}
			c.SourceCreatedAt = msTime(created)
			out = append(out, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("claim pending items of biller %s: %w", p.BillerID, err)
	}
	// RETURNING has no order of its own.
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.SourceCreatedAt.Equal(b.SourceCreatedAt) {
			return a.SourceCreatedAt.Before(b.SourceCreatedAt)
		}
		if a.ItemType != b.ItemType {
			return a.ItemType < b.ItemType
		}
		return a.ItemID < b.ItemID
	})
	return out, nil
}

// claimItemSQL moves the record claimItem read to Processing for the
// claimer. The retry time it waited for is cleared, as in the other
// adapters: it has passed, and a record held by a worker has none.
const claimItemSQL = `UPDATE datapump_control SET
    status = 'Processing', version = version + 1, owner = :owner,
    attempts = attempts + :takeover, lease_until = :now + :lease, next_attempt_at = NULL,
    processing_at = :now, updated_at = :now
WHERE item_type = :type AND item_id = :id AND version = :version
RETURNING ` + controlColumns

const insertProcessingSQL = `INSERT INTO datapump_control (
    item_type, item_id, biller_id, status, version, attempts, owner, lease_until, origin,
    source_created_at, created_at, updated_at, processing_at)
VALUES (:type, :id, :biller, 'Processing', 1, 0, :owner, :now + :lease, :origin,
    :source_created_at, :now, :now, :now)
RETURNING ` + controlColumns

// ControlClaimItem claims one item for processing in a BEGIN IMMEDIATE
// transaction: a Fetched or Queued record whose retry time has come, or a
// Processing record whose lease has expired (a takeover, which counts as a
// failed attempt), becomes Processing for Owner with a new version; with
// InsertIfAbsent, an item without a record gets one as Processing, or
// store.ErrNotFound if its source row does not exist. An unknown item type
// (store.ErrUnknownItemType) or a lease that is not positive fails before
// the transaction.
func (s *Store) ControlClaimItem(ctx context.Context, p store.ControlClaimItemParams) (store.ItemClaim, error) {
	src, err := s.claimCheck(p)
	if err != nil {
		return store.ItemClaim{}, err
	}
	var claim store.ItemClaim
	err = s.inWrite(ctx, func(tx *sql.Tx) error {
		now, err := txNow(ctx, tx)
		if err != nil {
			return err
		}
		claim, err = claimItem(ctx, tx, now, src, p)
		return err
	})
	if err != nil {
		return store.ItemClaim{}, fmt.Errorf("claim item %s: %w", p.Key, err)
	}
	return claim, nil
}

// claimCheck checks what a claim can be refused for without the database:
// the item type's source, and a positive lease.
func (s *Store) claimCheck(p store.ControlClaimItemParams) (*source, error) {
	src, err := s.source(p.Key.ItemType)
	if err != nil {
		return nil, fmt.Errorf("claim item %s: %w", p.Key, err)
	}
	if p.Lease <= 0 {
		return nil, fmt.Errorf("claim item %s: lease: %s must be positive", p.Key, p.Lease)
	}
	return src, nil
}

// itemError is a claim's problem with its own item, met inside a write
// transaction that it leaves as it was: the source row to insert a record
// for is missing or its created-at does not parse. A batch records it as
// that item's result and goes on with the others; every other error fails
// the transaction.
type itemError struct{ err error }

func (e itemError) Error() string { return e.err.Error() }
func (e itemError) Unwrap() error { return e.err }

// claimItem claims one item inside tx at now (unix milliseconds, read once
// per transaction): ControlClaimItem runs it alone, ControlClaimBatch once
// per item in one transaction.
func claimItem(ctx context.Context, tx *sql.Tx, now int64, src *source, p store.ControlClaimItemParams) (store.ItemClaim, error) {
	cur, err := scanControl(tx.QueryRowContext(ctx,
		`SELECT `+controlColumns+` FROM datapump_control WHERE item_type = :type AND item_id = :id`,
		sql.Named("type", p.Key.ItemType), sql.Named("id", p.Key.ItemID)))
	if errors.Is(err, sql.ErrNoRows) {
		return claimAbsent(ctx, tx, src, p, now)
	}
	if err != nil {
		return store.ItemClaim{}, err
	}
	claim := store.ItemClaim{Control: cur}
	takeover := 0
	nowTime := time.UnixMilli(now).UTC()
	switch cur.Status {
	case store.StatusNew:
		claim.Outcome = store.ClaimAbsent
		return claim, nil
	case store.StatusProcessed, store.StatusFailed, store.StatusSkipped:
		claim.Outcome = store.ClaimDone
		return claim, nil
	case store.StatusProcessing:
		if cur.LeaseUntil.After(nowTime) {
			claim.Outcome, claim.RetryAt = store.ClaimBusy, cur.LeaseUntil
			return claim, nil
		}
		takeover = 1
	case store.StatusFetched, store.StatusQueued:
		if cur.NextAttemptAt.After(nowTime) {
			claim.Outcome, claim.RetryAt = store.ClaimNotYet, cur.NextAttemptAt
			return claim, nil
		}
	default:
		return store.ItemClaim{}, fmt.Errorf("unknown status %q", cur.Status)
	}
	claim.Control, err = scanControl(tx.QueryRowContext(ctx, claimItemSQL,
		sql.Named("owner", p.Owner), sql.Named("takeover", takeover), sql.Named("now", now),
		sql.Named("lease", durationMS(p.Lease)), sql.Named("type", p.Key.ItemType),
		sql.Named("id", p.Key.ItemID), sql.Named("version", cur.Version)))
	if err != nil {
		return store.ItemClaim{}, err
	}
	claim.Outcome = store.ClaimAcquired
	return claim, nil
}

// claimAbsent handles an item without a control record.
func claimAbsent(ctx context.Context, tx *sql.Tx, src *source, p store.ControlClaimItemParams, now int64) (store.ItemClaim, error) {
	if !p.InsertIfAbsent {
		return store.ItemClaim{Outcome: store.ClaimAbsent}, nil
	}
	row, err := src.read(ctx, tx, p.Key)
	if err != nil {
		return store.ItemClaim{}, err
	}
	origin := p.Origin
	if origin == "" {
		origin = "direct"
	}
	c, err := scanControl(tx.QueryRowContext(ctx, insertProcessingSQL,
		sql.Named("type", p.Key.ItemType), sql.Named("id", p.Key.ItemID), sql.Named("biller", row.BillerID),
		sql.Named("owner", p.Owner), sql.Named("now", now), sql.Named("lease", durationMS(p.Lease)),
		sql.Named("origin", origin), sql.Named("source_created_at", msArg(row.CreatedAt))))
	if err != nil {
		return store.ItemClaim{}, err
	}
	return store.ItemClaim{Outcome: store.ClaimAcquired, Control: c}, nil
}

// queryer is a *sql.DB or *sql.Tx.
type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// read reads the biller and created-at of one source row. A missing row
// and a created-at that does not parse are itemErrors: the read left the
// transaction it ran in as it was.
func (c *source) read(ctx context.Context, q queryer, key store.ItemKey) (store.SourceRow, error) {
	args := append([]any{sql.Named("id", key.ItemID)}, c.args()...)
	var biller, created any
	err := q.QueryRowContext(ctx, c.row, args...).Scan(&biller, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return store.SourceRow{}, itemError{fmt.Errorf("source row %s: %w", key, store.ErrNotFound)}
	}
	if err != nil {
		return store.SourceRow{}, fmt.Errorf("source row %s: %w", key, err)
	}
	t, err := parseSourceTime(created)
	if err != nil {
		return store.SourceRow{}, itemError{fmt.Errorf("source row %s: %w", key, err)}
	}
	return store.SourceRow{ItemKey: key, BillerID: fmt.Sprint(biller), CreatedAt: t}, nil
}

// ItemSource reads the biller and created-at of one source row;
// store.ErrNotFound if it does not exist.
func (s *Store) ItemSource(ctx context.Context, key store.ItemKey) (store.SourceRow, error) {
	src, err := s.source(key.ItemType)
	if err != nil {
		return store.SourceRow{}, err
	}
	return src.read(ctx, s.read, key)
}

// ItemEnrich runs the item type's enrichment query for one item on the
// read pool and returns its first row by column name (TEXT as string,
// INTEGER as int64, REAL as float64, BLOB as []byte);
// store.ErrRelatedMissing if it finds none.
func (s *Store) ItemEnrich(ctx context.Context, key store.ItemKey) (map[string]any, error) {
	src, err := s.source(key.ItemType)
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	return src.enrichRow(ctx, s.read, key)
}

// enrichRow runs the source's enrichment query for key on q: the read
// pool for ItemEnrich, one read transaction for ItemEnrichBatch.
func (c *source) enrichRow(ctx context.Context, q queryer, key store.ItemKey) (map[string]any, error) {
	rows, err := q.QueryContext(ctx, c.enrich, key.ItemID)
	if err != nil {
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	}
	row, found, err := sqlrows.FirstRowMap(rows, nil)
	switch {
	case err != nil:
		return nil, fmt.Errorf("enrich %s: %w", key, err)
	case !found:
		return nil, fmt.Errorf("enrich %s: %w", key, store.ErrRelatedMissing)
	}
	return row, nil
}
