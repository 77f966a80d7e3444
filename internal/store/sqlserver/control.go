package sqlserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlrows"
)

// defaultLimit is the limit of ControlList, ControlListStuck,
// ControlReclaimExpired and PendingList when the caller gives none.
const defaultLimit = 100

// controlColumns is the column list scanControl reads, in its order.
const controlColumns = `item_type, item_id, biller_id, status, version, attempts, owner, lease_until, next_attempt_at, ` +
	`origin, last_error, source_created_at, created_at, updated_at, fetched_at, queued_at, processing_at, processed_at, failed_at`

// controlTableVar declares a table variable shaped like datapump_control,
// the target of OUTPUT … INTO.
const controlTableVar = `item_type nvarchar(64) NOT NULL, item_id bigint NOT NULL, biller_id nvarchar(128) NOT NULL,
    status nvarchar(16) NOT NULL, version bigint NOT NULL, attempts int NOT NULL, owner nvarchar(256) NOT NULL,
    lease_until datetime2(3) NULL, next_attempt_at datetime2(3) NULL, origin nvarchar(16) NOT NULL,
    last_error nvarchar(max) NOT NULL, source_created_at datetime2(3) NULL, created_at datetime2(3) NOT NULL,
    updated_at datetime2(3) NOT NULL, fetched_at datetime2(3) NULL, queued_at datetime2(3) NULL,
    processing_at datetime2(3) NULL, processed_at datetime2(3) NULL, failed_at datetime2(3) NULL`

// declareNow reads the database clock once for the batch, rounded to the
// milliseconds the tables keep: every value written and every comparison
// uses the same @now, and since rounding is monotonic a time stored as
// "now" is never later than a later @now.
const declareNow = `DECLARE @now datetime2(3) = SYSUTCDATETIME();`

// prefixed returns controlColumns qualified with alias (or inserted/deleted).
func prefixed(alias string) string { return prefixedList(alias, controlColumns) }

type scanner interface{ Scan(dest ...any) error }

// controlTargets returns scan destinations for controlColumns and a
// function that copies them into c.
func controlTargets(c *store.Control) ([]any, func()) {
	var (
		status                                         string
		leaseUntil, nextAttempt, sourceCreated         sql.NullTime
		fetched, queued, processing, processed, failed sql.NullTime
		createdAt, updatedAt                           time.Time
	)
	targets := []any{
		&c.ItemType, &c.ItemID, &c.BillerID, &status, &c.Version, &c.Attempts, &c.Owner, &leaseUntil, &nextAttempt,
		&c.Origin, &c.LastError, &sourceCreated, &createdAt, &updatedAt, &fetched, &queued, &processing, &processed, &failed,
	}
	return targets, func() {
		c.Status = store.Status(status)
		c.LeaseUntil = utc(leaseUntil)
		c.NextAttemptAt = utc(nextAttempt)
		c.SourceCreatedAt = utc(sourceCreated)
		c.CreatedAt = createdAt.UTC()
		c.UpdatedAt = updatedAt.UTC()
		c.FetchedAt = utc(fetched)
		c.QueuedAt = utc(queued)
		c.ProcessingAt = utc(processing)
		c.ProcessedAt = utc(processed)
		c.FailedAt = utc(failed)
	}
}

func scanControl(row scanner) (store.Control, error) {
	var c store.Control
	targets, done := controlTargets(&c)
	if err := row.Scan(targets...); err != nil {
		return store.Control{}, err
	}
	done()
	return c, nil
}

func collectControls(rows *sql.Rows, err error) ([]store.Control, error) {
	if err != nil {
		return nil, err
	}
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

// queryControls runs a query returning controlColumns rows, again if it is
// chosen as a deadlock victim.
func (s *Store) queryControls(ctx context.Context, q string, args []any) ([]store.Control, error) {
	var out []store.Control
	err := s.retryDeadlock(ctx, func() error {
		var err error
		out, err = collectControls(s.db.QueryContext(ctx, q, args...))
		return err
	})
	return out, err
}

// controlGetSQL reads one record by primary key. Locking review: a plain
// READ COMMITTED read of one key: a shared lock held only while the row is
// read (or the last committed version under READ_COMMITTED_SNAPSHOT), so it
// waits at most for a transition in flight and never blocks one for long.
func (s *Store) controlGetSQL(key store.ItemKey) (string, params) {
	var p params
	return `SELECT ` + controlColumns + ` FROM ` + s.t.control +
		` WHERE item_type = ` + p.add(key.ItemType) + ` AND item_id = ` + p.add(key.ItemID), p
}

// ControlGet reads one control record; store.ErrNotFound if absent.
func (s *Store) ControlGet(ctx context.Context, key store.ItemKey) (store.Control, error) {
	q, args := s.controlGetSQL(key)
	c, err := scanControl(s.db.QueryRowContext(ctx, q, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Control{}, fmt.Errorf("control record %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return store.Control{}, fmt.Errorf("get control record %s: %w", key, err)
	}
	return c, nil
}

// fencedKey is one element of the JSON arrays OPENJSON reads.
type fencedKey struct {
	T string `json:"t"`
	I int64  `json:"i"`
	V int64  `json:"v,omitempty"`
}

// fencedJSON encodes records as a JSON array in key order, so that a
// statement walking it locks rows in one order in every caller.
func fencedJSON(items []store.Fenced) (string, error) {
	rows := make([]fencedKey, len(items))
	for i, f := range items {
		rows[i] = fencedKey{T: f.ItemType, I: f.ItemID, V: f.Version}
	}
	slices.SortFunc(rows, func(a, b fencedKey) int { return compareKeys(a.T, a.I, b.T, b.I) })
	b, err := json.Marshal(rows)
	return string(b), err
}

// markQueuedSQL moves a batch Fetched → Queued, each row only at the version
// its caller read (fencing) and only while still Fetched, so a late update
// after an item consumer's claim changes nothing.
//
// Locking review: the JSON list drives nested-loop seeks on the primary key
// (the update takes U then X locks on exactly the listed keys, never a scan
// that could escalate); the list is sorted by key, so two overlapping
// batches lock in the same order. A rare deadlock victim is retried.
func (s *Store) markQueuedSQL(items []store.Fenced) (string, params, error) {
	j, err := fencedJSON(items)
	if err != nil {
		return "", nil, err
	}
	var p params
	q := `SET NOCOUNT ON;
` + declareNow + `
UPDATE c
SET status = N'Queued', version = c.version + 1, owner = N'', queued_at = @now, updated_at = @now
FROM ` + s.t.control + ` AS c
JOIN OPENJSON(` + p.add(j) + `) WITH (item_type nvarchar(64) '$.t', item_id bigint '$.i', version bigint '$.v') AS f
  ON c.item_type = f.item_type AND c.item_id = f.item_id AND c.version = f.version
WHERE c.status = N'Fetched';
SELECT @@ROWCOUNT;`
	return q, p, nil
}

// ControlMarkQueued moves each record Fetched → Queued if it is still
// Fetched at the given version, in one statement, and returns how many moved.
func (s *Store) ControlMarkQueued(ctx context.Context, items []store.Fenced) (int, error) {
	if len(items) == 0 {
		return 0, nil
	}
	q, args, err := s.markQueuedSQL(items)
	if err != nil {
		return 0, fmt.Errorf("mark queued: %w", err)
	}
	n, err := s.rowCount(ctx, q, args)
	if err != nil {
		return 0, fmt.Errorf("mark queued: %w", err)
	}
	return int(n), nil
}

// claimAttempts bounds how often ControlClaimItem re-reads a record that
// changed under it before giving up.
const claimAttempts = 10

// claimSet is the SET list of a claim, shared by the one-item and the
// batch claim: Processing for owner until leaseMS milliseconds after @now
// (both SQL expressions), with a new version, and one more attempt for a
// takeover of an expired lease. c qualifies the record's columns in the
// expressions ("" or an alias and a dot); SET expressions read the
// pre-update row.
func claimSet(c, owner, leaseMS string) string {
	return `SET status = N'Processing', version = ` + c + `version + 1, owner = ` + owner + `,
    attempts = CASE WHEN ` + c + `status = N'Processing' THEN ` + c + `attempts + 1 ELSE ` + c + `attempts END,
    lease_until = DATEADD(millisecond, ` + leaseMS + `, @now), next_attempt_at = NULL,
    processing_at = @now, updated_at = @now`
}

// claimable is when a record (columns qualified with c, as in claimSet)
// can be claimed at @now: Queued or Fetched whose retry time has come, or
// Processing whose lease has expired. classifyClaim says why a record
// outside it is not claimable.
func claimable(c string) string {
	return `((` + c + `status IN (N'Queued', N'Fetched') AND (` + c + `next_attempt_at IS NULL OR ` + c + `next_attempt_at <= @now))
    OR (` + c + `status = N'Processing' AND ` + c + `lease_until <= @now))`
}

// claimItemSQL is the item consumer's claim: one conditional UPDATE by
// primary key — Queued or Fetched whose retry time has come, or Processing
// whose lease has expired (a takeover, counted as an attempt) — to
// Processing with a new version and lease, returned through OUTPUT … INTO;
// then the record as it stands when the update did not take it, so the
// caller can tell busy from done from not-yet.
//
// Locking review: the UPDATE seeks the clustered key and takes a U lock on
// that one row while it evaluates the condition, converting to X if it
// holds; concurrent claimers of the same item queue on that U lock and,
// when the first commits, re-evaluate the condition against the committed
// row (Processing with a live lease), so exactly one wins. SET expressions
// read the pre-update row, so attempts+1 applies only to a takeover.
func (s *Store) claimItemSQL(p store.ControlClaimItemParams, leaseMS int32) (string, params) {
	var a params
	typ, id := a.add(p.Key.ItemType), a.add(p.Key.ItemID)
	q := `SET NOCOUNT ON;
` + declareNow + `
DECLARE @out TABLE (` + controlTableVar + `);
UPDATE ` + s.t.control + `
` + claimSet("", a.add(p.Owner), a.add(leaseMS)) + `
OUTPUT ` + prefixed("inserted") + `
INTO @out
WHERE item_type = ` + typ + ` AND item_id = ` + id + `
  AND ` + claimable("") + `;
SELECT CAST(1 AS bit) AS acquired, @now AS now, ` + controlColumns + ` FROM @out
UNION ALL
SELECT CAST(0 AS bit), @now, ` + controlColumns + ` FROM ` + s.t.control + `
WHERE item_type = ` + typ + ` AND item_id = ` + id + ` AND NOT EXISTS (SELECT 1 FROM @out);`
	return q, a
}

// claimInsertSQL inserts a Processing record for an item nobody fetched
// (a source that published directly), with the biller and created-at read
// from the source row.
//
// Locking review: the existence check reads WITH (UPDLOCK, HOLDLOCK). On
// an absent key HOLDLOCK (serializable) takes a RangeS-U lock on the key
// range the item would go into, held to the end of the statement's
// transaction; RangeS-U is incompatible with itself, so a second inserter
// of the same item waits on the check instead of also finding it absent,
// and then finds the first one's row and inserts nothing. UPDLOCK is what
// keeps the two from a deadlock: with shared range locks both would pass
// the check and then block each other's insert (RangeI-N). FORCESEEK keeps
// the check a seek on the clustered key, so the range locked is the one
// around this item, never the table. A duplicate-key error is still treated
// as "someone else inserted it".
func (s *Store) claimInsertSQL(p store.ControlClaimItemParams, row store.SourceRow, leaseMS int32, origin string) (string, params) {
	var a params
	typ, id := a.add(p.Key.ItemType), a.add(p.Key.ItemID)
	q := `SET NOCOUNT ON;
` + declareNow + `
DECLARE @out TABLE (` + controlTableVar + `);
INSERT INTO ` + s.t.control + ` (item_type, item_id, biller_id, status, version, attempts, owner, lease_until,
    origin, source_created_at, created_at, updated_at, processing_at)
OUTPUT ` + prefixed("inserted") + `
INTO @out
SELECT ` + typ + `, ` + id + `, ` + a.add(row.BillerID) + `, N'Processing', 1, 0, ` + a.add(p.Owner) + `, DATEADD(millisecond, ` + a.add(leaseMS) + `, @now),
    ` + a.add(origin) + `, CAST(` + a.add(timeArg(row.CreatedAt)) + ` AS datetime2(3)), @now, @now, @now
WHERE NOT EXISTS (SELECT 1 FROM ` + s.t.control + ` WITH (UPDLOCK, HOLDLOCK, FORCESEEK) WHERE item_type = ` + typ + ` AND item_id = ` + id + `);
SELECT ` + controlColumns + ` FROM @out;`
	return q, a
}

// ControlClaimItem claims one item for processing (see
// store.ControlClaimItemParams). The conditional update and the read of the
// record as it stands are one batch; when the read shows a record the
// update should have taken (it changed in between), the claim is tried again.
func (s *Store) ControlClaimItem(ctx context.Context, p store.ControlClaimItemParams) (store.ItemClaim, error) {
	src, leaseMS, err := s.claimCheck(p)
	if err != nil {
		return store.ItemClaim{}, err
	}
	for range claimAttempts {
		claim, settled, err := s.claimExisting(ctx, p, leaseMS)
		if err != nil {
			return store.ItemClaim{}, fmt.Errorf("claim item %s: %w", p.Key, err)
		}
		if !settled {
			continue
		}
		if claim.Outcome == store.ClaimAbsent && claim.Control.ItemKey == (store.ItemKey{}) && p.InsertIfAbsent {
			claim, settled, err = s.claimInsert(ctx, src, p, leaseMS)
			if err != nil {
				return store.ItemClaim{}, fmt.Errorf("claim item %s: %w", p.Key, err)
			}
			if !settled {
				continue // another worker inserted it first: read what it made
			}
		}
		return claim, nil
	}
	return store.ItemClaim{}, fmt.Errorf("claim item %s: record kept changing during %d attempts", p.Key, claimAttempts)
}

// claimCheck checks what a claim can be refused for without the database,
// for ControlClaimItem and each item of ControlClaimBatch: the item type's
// source (store.ErrUnknownItemType), and a lease that is positive and fits
// DATEADD's milliseconds, which it returns.
func (s *Store) claimCheck(p store.ControlClaimItemParams) (*source, int32, error) {
	src, err := s.source(p.Key.ItemType)
	if err != nil {
		return nil, 0, fmt.Errorf("claim item %s: %w", p.Key, err)
	}
	if p.Lease <= 0 {
		return nil, 0, fmt.Errorf("claim item %s: lease: %s must be positive", p.Key, p.Lease)
	}
	leaseMS, err := millis("lease", p.Lease)
	if err != nil {
		return nil, 0, fmt.Errorf("claim item %s: %w", p.Key, err)
	}
	return src, leaseMS, nil
}

// claimExisting tries the conditional update. settled is false when the
// record read back should have been claimable: it changed concurrently.
func (s *Store) claimExisting(ctx context.Context, p store.ControlClaimItemParams, leaseMS int32) (store.ItemClaim, bool, error) {
	q, args := s.claimItemSQL(p, leaseMS)
	var (
		found    bool
		acquired bool
		now      time.Time
		c        store.Control
	)
	err := s.retryDeadlock(ctx, func() error {
		found = false
		targets, done := controlTargets(&c)
		err := s.db.QueryRowContext(ctx, q, args...).Scan(append([]any{&acquired, &now}, targets...)...)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		done()
		return nil
	})
	if err != nil {
		return store.ItemClaim{}, false, err
	}
	if !found {
		return store.ItemClaim{Outcome: store.ClaimAbsent}, true, nil
	}
	if acquired {
		return store.ItemClaim{Outcome: store.ClaimAcquired, Control: c}, true, nil
	}
	claim, settled := classifyClaim(c, now)
	return claim, settled, nil
}

// classifyClaim says why a record a claim did not take was not claimable
// at now (the statement's @now); settled is false when it looks claimable:
// it changed while the claim ran.
func classifyClaim(c store.Control, now time.Time) (claim store.ItemClaim, settled bool) {
	now = now.UTC()
	claim = store.ItemClaim{Control: c}
	switch {
	case c.Status == store.StatusNew:
		claim.Outcome = store.ClaimAbsent
	case c.Status.Terminal():
		claim.Outcome = store.ClaimDone
	case c.Status == store.StatusProcessing && c.LeaseUntil.After(now):
		claim.Outcome, claim.RetryAt = store.ClaimBusy, c.LeaseUntil
	case (c.Status == store.StatusQueued || c.Status == store.StatusFetched) && c.NextAttemptAt.After(now):
		claim.Outcome, claim.RetryAt = store.ClaimNotYet, c.NextAttemptAt
	default:
		return store.ItemClaim{}, false
	}
	return claim, true
}

// claimInsert inserts a Processing record for an item without one. settled
// is false when another worker inserted first.
func (s *Store) claimInsert(ctx context.Context, src *source, p store.ControlClaimItemParams, leaseMS int32) (store.ItemClaim, bool, error) {
	row, err := s.itemSource(ctx, src, p.Key)
	if err != nil {
		return store.ItemClaim{}, false, err
	}
	origin := p.Origin
	if origin == "" {
		origin = "direct"
	}
	q, args := s.claimInsertSQL(p, row, leaseMS, origin)
	var c store.Control
	err = s.retryDeadlock(ctx, func() error {
		var err error
		c, err = scanControl(s.db.QueryRowContext(ctx, q, args...))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) || isDuplicateKey(err) {
		return store.ItemClaim{}, false, nil
	}
	if err != nil {
		return store.ItemClaim{}, false, fmt.Errorf("insert control record: %w", err)
	}
	return store.ItemClaim{Outcome: store.ClaimAcquired, Control: c}, true, nil
}

// whereHeld is the fencing condition of every update by a claim holder:
// the row, at the version the holder read, still Processing.
func whereHeld(p *params, f store.Fenced) string {
	return `WHERE item_type = ` + p.add(f.ItemType) + ` AND item_id = ` + p.add(f.ItemID) +
		` AND version = ` + p.add(f.Version) + ` AND status = N'Processing';`
}

// extendLeaseSQL pushes a held lease forward. Not a transition: the version
// stays. Locking review: one clustered-key seek, one row's U/X lock.
func (s *Store) extendLeaseSQL(f store.Fenced, leaseMS int32) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
` + declareNow + `
UPDATE ` + s.t.control + `
SET lease_until = DATEADD(millisecond, ` + p.add(leaseMS) + `, @now), updated_at = @now
` + whereHeld(&p, f) + `
SELECT @@ROWCOUNT;`
	return q, p
}

// ControlExtendLease pushes the lease of a Processing record forward; false
// means the caller no longer holds it. The version does not change.
func (s *Store) ControlExtendLease(ctx context.Context, f store.Fenced, lease time.Duration) (bool, error) {
	if lease <= 0 {
		return false, fmt.Errorf("extend lease %s: lease: %s must be positive", f.ItemKey, lease)
	}
	ms, err := millis("lease", lease)
	if err != nil {
		return false, fmt.Errorf("extend lease %s: %w", f.ItemKey, err)
	}
	q, args := s.extendLeaseSQL(f, ms)
	n, err := s.rowCount(ctx, q, args)
	if err != nil {
		return false, fmt.Errorf("extend lease %s: %w", f.ItemKey, err)
	}
	return n == 1, nil
}

// finishSet is the SET list that ends a held claim, shared by the one-item
// and the batch finish: status (an SQL expression, 'Processed' or
// 'Failed'), a new version, no lease, and lastError (an SQL expression)
// as the last error unless it is NULL, which keeps the one there. c
// qualifies the record's columns in the expressions ("" or an alias and a
// dot).
func finishSet(c, status, lastError string) string {
	return `SET status = ` + status + `, version = ` + c + `version + 1, lease_until = NULL, updated_at = @now,
    last_error = COALESCE(` + lastError + `, ` + c + `last_error),
    processed_at = CASE WHEN ` + status + ` = N'Processed' THEN @now END,
    failed_at = CASE WHEN ` + status + ` = N'Failed' THEN @now END`
}

// finishSQL ends a held claim as Processed or Failed, keeping the last
// error unless a new one is given. Locking review: one clustered-key seek.
func (s *Store) finishSQL(p store.ControlFinishParams) (string, params) {
	var a params
	status := a.add(string(p.Status))
	var lastError any = sql.NullString{}
	if p.Error != "" {
		lastError = p.Error
	}
	q := `SET NOCOUNT ON;
` + declareNow + `
UPDATE ` + s.t.control + `
` + finishSet("", status, a.add(lastError)) + `
` + whereHeld(&a, p.Fenced) + `
SELECT @@ROWCOUNT;`
	return q, a
}

// ControlFinish ends a Processing claim as Processed or Failed; false means
// the caller no longer held it and nothing changed.
func (s *Store) ControlFinish(ctx context.Context, p store.ControlFinishParams) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	q, args := s.finishSQL(p)
	n, err := s.rowCount(ctx, q, args)
	if err != nil {
		return false, fmt.Errorf("finish %s: %w", p.ItemKey, err)
	}
	return n == 1, nil
}

// releaseSQL hands a held claim back for a later retry. Locking review:
// one clustered-key seek.
func (s *Store) releaseSQL(p store.ControlReleaseParams, retryMS int32) (string, params) {
	var a params
	q := `SET NOCOUNT ON;
` + declareNow + `
UPDATE ` + s.t.control + `
SET status = N'Queued', version = version + 1, attempts = attempts + 1, owner = N'', lease_until = NULL,
    next_attempt_at = DATEADD(millisecond, ` + a.add(retryMS) + `, @now), last_error = ` + a.add(p.Error) + `,
    queued_at = @now, updated_at = @now
` + whereHeld(&a, p.Fenced) + `
SELECT @@ROWCOUNT;`
	return q, a
}

// ControlRelease hands a Processing claim back for a later retry:
// Processing → Queued, attempts+1, next attempt after RetryIn.
func (s *Store) ControlRelease(ctx context.Context, p store.ControlReleaseParams) (bool, error) {
	ms, err := millis("retry_in", p.RetryIn)
	if err != nil {
		return false, fmt.Errorf("release %s: %w", p.ItemKey, err)
	}
	q, args := s.releaseSQL(p, ms)
	n, err := s.rowCount(ctx, q, args)
	if err != nil {
		return false, fmt.Errorf("release %s: %w", p.ItemKey, err)
	}
	return n == 1, nil
}

// skipSQL marks a not-yet-processing record Skipped. Locking review: one
// clustered-key seek; a Processing row is left to its holder.
func (s *Store) skipSQL(key store.ItemKey, reason string) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
` + declareNow + `
UPDATE ` + s.t.control + `
SET status = N'Skipped', version = version + 1, owner = N'', lease_until = NULL, last_error = ` + p.add(reason) + `, updated_at = @now
WHERE item_type = ` + p.add(key.ItemType) + ` AND item_id = ` + p.add(key.ItemID) + ` AND status IN (N'New', N'Fetched', N'Queued');
SELECT @@ROWCOUNT;`
	return q, p
}

// ControlSkip marks a New, Fetched or Queued record Skipped with the reason
// as its last error; false if it was in any other state or absent.
func (s *Store) ControlSkip(ctx context.Context, key store.ItemKey, reason string) (bool, error) {
	q, args := s.skipSQL(key, reason)
	n, err := s.rowCount(ctx, q, args)
	if err != nil {
		return false, fmt.Errorf("skip %s: %w", key, err)
	}
	return n == 1, nil
}

// listStuckSQL takes the oldest overdue Fetched/Queued records and bumps
// their updated-at (not their version), returning them after the bump.
//
// Locking review: the CTE is the queue-reader pattern — TOP (n) … ORDER BY
// over WITH (ROWLOCK, UPDLOCK, READPAST). The filter matches the filtered
// index IX_datapump_control_stuck (status IN ('Fetched','Queued'), keyed on
// updated_at), so the scan walks only in-flight rows in updated_at order and
// stops after n; UPDLOCK holds each taken row until the bump commits,
// READPAST skips rows another rescuer or a consumer holds instead of
// waiting, and ROWLOCK keeps the locks on rows. Without that index the scan
// would read (and lock) the whole history and escalate to a table lock
// that blocks every claimer. READCOMMITTEDLOCK keeps READPAST legal on a
// database with READ_COMMITTED_SNAPSHOT on (UPDLOCK already reads by
// locking). An UPDATE through a CTE changes its one base table; OUTPUT's
// deleted.updated_at keeps the order the rows were found in.
func (s *Store) listStuckSQL(olderMS int32, limit int64) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
` + declareNow + `
DECLARE @out TABLE (` + controlTableVar + `, was_updated_at datetime2(3) NOT NULL);
WITH stuck AS (
    SELECT TOP (` + p.add(limit) + `) *
    FROM ` + s.t.control + ` WITH (ROWLOCK, UPDLOCK, READPAST, READCOMMITTEDLOCK)
    WHERE status IN (N'Fetched', N'Queued') AND updated_at <= DATEADD(millisecond, -` + p.add(olderMS) + `, @now)
      AND (next_attempt_at IS NULL OR next_attempt_at <= @now)
    ORDER BY updated_at, item_type, item_id
)
UPDATE stuck SET updated_at = @now
OUTPUT ` + prefixed("inserted") + `, deleted.updated_at
INTO @out;
SELECT ` + controlColumns + ` FROM @out ORDER BY was_updated_at, item_type, item_id;`
	return q, p
}

// ControlListStuck lists Fetched/Queued records not updated for OlderThan
// whose retry time (if any) has passed, oldest first, and bumps their
// updated-at. Rows another transaction holds are skipped, not waited for.
// A zero Limit means 100.
func (s *Store) ControlListStuck(ctx context.Context, p store.ControlListStuckParams) ([]store.Control, error) {
	ms, err := millis("older_than", p.OlderThan)
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	q, args := s.listStuckSQL(ms, limitOr(p.Limit, defaultLimit))
	out, err := s.queryControls(ctx, q, args)
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	return out, nil
}

// reclaimExpiredSQL returns expired Processing leases to Queued.
//
// Locking review: as listStuckSQL, on the filtered index
// IX_datapump_control_lease (status = 'Processing', keyed on lease_until):
// TOP (n) in lease order WITH (ROWLOCK, UPDLOCK, READPAST) takes only
// expired rows nobody holds at the moment. A holder finishing at the same
// instant either commits first (the row is no longer Processing when
// re-read under the U lock) or loses, and is fenced out by the new version.
func (s *Store) reclaimExpiredSQL(limit int64) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
` + declareNow + `
DECLARE @out TABLE (` + controlTableVar + `, was_lease_until datetime2(3) NULL);
WITH expired AS (
    SELECT TOP (` + p.add(limit) + `) *
    FROM ` + s.t.control + ` WITH (ROWLOCK, UPDLOCK, READPAST, READCOMMITTEDLOCK)
    WHERE status = N'Processing' AND lease_until <= @now
    ORDER BY lease_until, item_type, item_id
)
UPDATE expired
SET status = N'Queued', version = version + 1, attempts = attempts + 1, owner = N'', lease_until = NULL,
    next_attempt_at = NULL, last_error = CONCAT(N'lease of ', owner, N' expired'), queued_at = @now, updated_at = @now
OUTPUT ` + prefixed("inserted") + `, deleted.lease_until
INTO @out;
SELECT ` + controlColumns + ` FROM @out ORDER BY was_lease_until, item_type, item_id;`
	return q, p
}

// ControlReclaimExpired moves Processing records whose lease expired back
// to Queued (attempts+1, owner cleared), soonest-expired first, and returns
// them. Rows another transaction holds are skipped. A zero Limit means 100.
func (s *Store) ControlReclaimExpired(ctx context.Context, p store.ControlReclaimExpiredParams) ([]store.Control, error) {
	q, args := s.reclaimExpiredSQL(limitOr(p.Limit, defaultLimit))
	out, err := s.queryControls(ctx, q, args)
	if err != nil {
		return nil, fmt.Errorf("reclaim expired leases: %w", err)
	}
	return out, nil
}

// controlListSQL lists records for operators, newest first. Locking
// review: a plain read, no hints; shared locks are released as it goes.
func (s *Store) controlListSQL(p store.ControlListParams) (string, params, error) {
	var a params
	q := `SELECT TOP (` + a.add(limitOr(p.Limit, defaultLimit)) + `) ` + controlColumns + ` FROM ` + s.t.control
	var where []string
	if p.BillerID != "" {
		where = append(where, `biller_id = `+a.add(p.BillerID))
	}
	if p.ItemType != "" {
		where = append(where, `item_type = `+a.add(p.ItemType))
	}
	if len(p.Statuses) > 0 {
		statuses := make([]string, len(p.Statuses))
		for i, st := range p.Statuses {
			if !st.Valid() {
				return "", nil, fmt.Errorf("status: %q is not a known status", st)
			}
			statuses[i] = string(st)
		}
		j, err := json.Marshal(statuses)
		if err != nil {
			return "", nil, err
		}
		where = append(where, `status IN (SELECT value FROM OPENJSON(`+a.add(string(j))+`))`)
	}
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	q += ` ORDER BY created_at DESC, item_type DESC, item_id DESC`
	return q, a, nil
}

// ControlList lists control records for operators, newest first; a zero
// Limit means 100.
func (s *Store) ControlList(ctx context.Context, p store.ControlListParams) ([]store.Control, error) {
	q, args, err := s.controlListSQL(p)
	if err != nil {
		return nil, fmt.Errorf("list control records: %w", err)
	}
	out, err := collectControls(s.db.QueryContext(ctx, q, args...))
	if err != nil {
		return nil, fmt.Errorf("list control records: %w", err)
	}
	return out, nil
}

// countByStatusSQL counts records per biller and status, in pipeline order
// of the status. The statuses are the port's constants, not input.
//
// Without Processed records the count must read the filtered index
// IX_datapump_control_open_biller_status (migration 00005), which covers it,
// and never the history. Assumed, for the optimizer to match that index:
//   - the predicate is the index's filter as a literal, status <>
//     N'Processed': a parameter for the status would compile to a plan for
//     any value, which the filtered index cannot serve;
//   - OPTION (RECOMPILE) keeps that literal a literal on a database a DBA
//     set to PARAMETERIZATION FORCED, which would otherwise turn it into a
//     parameter (forced parameterization leaves statements with RECOMPILE
//     alone); the compilation is cheap beside the scan it avoids, once per
//     publisher interval per pod;
//   - the session runs with the SET options filtered indexes need
//     (ANSI_NULLS, ANSI_PADDING, ANSI_WARNINGS, ARITHABORT,
//     CONCAT_NULL_YIELDS_NULL, QUOTED_IDENTIFIER ON, NUMERIC_ROUNDABORT
//     OFF): sessionInit sets them on every connection of the pool Open
//     makes. With other options the optimizer would silently pass the index
//     over.
//
// With Processed records it reads the table: operators only.
//
// Locking review: a plain read; shared locks are released row by row, so it
// never holds up the claimers.
func (s *Store) countByStatusSQL(withProcessed bool) string {
	var order strings.Builder
	for i, st := range store.Statuses {
		fmt.Fprintf(&order, " WHEN N'%s' THEN %d", st, i)
	}
	where, option := `
WHERE status <> N'Processed'`, `
OPTION (RECOMPILE)`
	if withProcessed {
		where, option = ``, ``
	}
	return `SELECT biller_id, status, COUNT_BIG(*) FROM ` + s.t.control + where + `
GROUP BY biller_id, status
ORDER BY biller_id, CASE status` + order.String() + ` END, status` + option
}

// ControlCountByStatus counts records per biller and status, ordered by
// biller and then pipeline order of the status; Processed records only
// WithProcessed.
func (s *Store) ControlCountByStatus(ctx context.Context, p store.ControlCountParams) ([]store.StatusCount, error) {
	rows, err := s.db.QueryContext(ctx, s.countByStatusSQL(p.WithProcessed))
	if err != nil {
		return nil, fmt.Errorf("count control records: %w", err)
	}
	return sqlrows.StatusCounts(rows)
}

// retryFilter is the WHERE clause (alias c) choosing the Failed records a
// retry names.
func retryFilter(a *params, p store.ControlRetryParams) (string, error) {
	where := []string{`c.status = N'Failed'`}
	if p.BillerID != "" {
		where = append(where, `c.biller_id = `+a.add(p.BillerID))
	}
	if p.ItemType != "" {
		where = append(where, `c.item_type = `+a.add(p.ItemType))
	}
	if !p.FailedFrom.IsZero() {
		where = append(where, `c.failed_at >= CAST(`+a.add(p.FailedFrom.UTC())+` AS datetime2(7))`)
	}
	if !p.FailedTo.IsZero() {
		where = append(where, `c.failed_at < CAST(`+a.add(p.FailedTo.UTC())+` AS datetime2(7))`)
	}
	if len(p.Keys) > 0 {
		keys := make([]store.Fenced, len(p.Keys))
		for i, k := range p.Keys {
			keys[i] = store.Fenced{ItemKey: k}
		}
		j, err := fencedJSON(keys)
		if err != nil {
			return "", err
		}
		where = append(where, `EXISTS (SELECT 1 FROM OPENJSON(`+a.add(j)+`) WITH (item_type nvarchar(64) '$.t', item_id bigint '$.i') AS k
        WHERE k.item_type = c.item_type AND k.item_id = c.item_id)`)
	}
	return strings.Join(where, `
      AND `), nil
}

// retryLimit is a retry's TOP: no limit is the largest bigint.
func retryLimit(n int) int64 {
	if n <= 0 {
		return math.MaxInt64
	}
	return int64(n)
}

// retrySQL moves the chosen Failed records to Queued, oldest failure first,
// and returns them as they now stand; with dryRun it only reads them.
//
// Locking review: TOP (n) … ORDER BY failed_at through a CTE WITH (ROWLOCK,
// UPDLOCK): each chosen row is U-locked as it is read and re-checked against
// the committed row, so two operators retrying the same records at once
// queue on the row locks and the second finds them Queued and skips them —
// each record moves once. No READPAST: an operator's retry should wait for a
// record a worker is finishing, not silently leave it out. The filtered index
// IX_datapump_control_failed keeps the scan to Failed rows.
func (s *Store) retrySQL(p store.ControlRetryParams, dryRun bool) (string, params, error) {
	var a params
	limit := a.add(retryLimit(p.Limit))
	where, err := retryFilter(&a, p)
	if err != nil {
		return "", nil, err
	}
	if dryRun {
		return `SELECT TOP (` + limit + `) ` + prefixed("c") + `
FROM ` + s.t.control + ` AS c
WHERE ` + where + `
ORDER BY c.failed_at, c.item_type, c.item_id`, a, nil
	}
	return `SET NOCOUNT ON;
` + declareNow + `
DECLARE @out TABLE (` + controlTableVar + `);
WITH r AS (
    SELECT TOP (` + limit + `) c.*
    FROM ` + s.t.control + ` AS c WITH (ROWLOCK, UPDLOCK, READCOMMITTEDLOCK)
    WHERE ` + where + `
    ORDER BY c.failed_at, c.item_type, c.item_id
)
UPDATE r
SET status = N'Queued', version = version + 1, attempts = 0, owner = N'', lease_until = NULL,
    next_attempt_at = NULL, queued_at = @now, updated_at = @now
OUTPUT ` + prefixed("inserted") + `
INTO @out;
SELECT ` + controlColumns + ` FROM @out ORDER BY failed_at, item_type, item_id;`, a, nil
}

// ControlRetry moves Failed records matching the filter back to Queued
// (attempts reset to 0, no owner, lease or retry delay, version+1, last
// error kept), oldest failure first up to Limit (zero: no limit), and
// returns them as they now stand. With DryRun it only reads, and returns the
// records that would move.
func (s *Store) ControlRetry(ctx context.Context, p store.ControlRetryParams) ([]store.Control, error) {
	q, args, err := s.retrySQL(p, p.DryRun)
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	out, err := s.queryControls(ctx, q, args)
	if err != nil {
		return nil, fmt.Errorf("retry: %w", err)
	}
	return out, nil
}
