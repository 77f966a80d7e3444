package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/datapump/datapump/internal/store"
)

// controlColumns is the column list scanControl reads, in its order.
const controlColumns = `item_type, item_id, biller_id, status, version, attempts, owner, lease_until, next_attempt_at,
	origin, last_error, source_created_at, created_at, updated_at, fetched_at, queued_at, processing_at, processed_at, failed_at`

// prefixed returns controlColumns qualified with a table alias.
func prefixed(alias string) string {
	return alias + `.item_type, ` + alias + `.item_id, ` + alias + `.biller_id, ` + alias + `.status, ` + alias + `.version, ` +
		alias + `.attempts, ` + alias + `.owner, ` + alias + `.lease_until, ` + alias + `.next_attempt_at, ` + alias + `.origin, ` +
		alias + `.last_error, ` + alias + `.source_created_at, ` + alias + `.created_at, ` + alias + `.updated_at, ` +
		alias + `.fetched_at, ` + alias + `.queued_at, ` + alias + `.processing_at, ` + alias + `.processed_at, ` + alias + `.failed_at`
}

// lockByKey is the body of a LATERAL subquery that reads and locks (with
// lock, e.g. "FOR UPDATE") the control record of the row k names
// (k.item_type, k.item_id), by primary key alone. Callers filter on the
// record's status outside it, and iterate k in key order so that two
// statements lock shared records in one order and cannot deadlock. OFFSET
// 0 keeps the planner from pushing the status filter inside, where a stale
// statistic of the status mix (a burst of Fetched records since the last
// ANALYZE) makes it prefer a partial status index and scan every record in
// that status for each key. The update that follows joins on the primary
// key only: the lock already holds the status it checked.
func lockByKey(lock string) string {
	return `SELECT ` + controlColumns + ` FROM datapump_control c
				WHERE c.item_type = k.item_type AND c.item_id = k.item_id OFFSET 0 ` + lock
}

// keyStatus is the status of the record a lookup by primary key finds
// (alias a), for a condition next to the key. The no-op concatenation hides
// the column from the planner, which cannot then prove that the condition
// implies a partial status index's predicate, and so never scans such an
// index for the row instead of probing the key. That scan looks cheapest
// while the index is nearly empty, which is when a prepared statement's
// generic plan may be made and cached; by the time it runs, the index may
// hold the whole backlog (datapump_control_open_biller_status_idx) or every
// item in flight (datapump_control_lease_idx). lockByKey gets the same with
// OFFSET 0.
func keyStatus(a string) string { return `(` + a + `.status || '')` }

// micros renders a duration as a bigint of microseconds, the unit the SQL
// multiplies by interval '1 microsecond'.
func micros(d time.Duration) int64 { return d.Microseconds() }

// controlTargets returns scan destinations for controlColumns and a
// function that copies them into c.
func controlTargets(c *store.Control) ([]any, func()) {
	var (
		status                                         string
		leaseUntil, nextAttempt, sourceCreated         *time.Time
		fetched, queued, processing, processed, failed *time.Time
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

func utc(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// nullTime passes a zero time as SQL NULL.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

func collectControls(rows pgx.Rows) ([]store.Control, error) {
	defer rows.Close()
	var out []store.Control
	for rows.Next() {
		var c store.Control
		targets, done := controlTargets(&c)
		if err := rows.Scan(targets...); err != nil {
			return nil, err
		}
		done()
		out = append(out, c)
	}
	return out, rows.Err()
}

// ControlGet reads one control record; store.ErrNotFound if absent.
func (s *Store) ControlGet(ctx context.Context, key store.ItemKey) (store.Control, error) {
	var c store.Control
	targets, done := controlTargets(&c)
	err := s.pool.QueryRow(ctx, `SELECT `+controlColumns+` FROM datapump_control WHERE item_type = $1 AND item_id = $2`,
		key.ItemType, key.ItemID).Scan(targets...)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Control{}, fmt.Errorf("control record %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return store.Control{}, fmt.Errorf("get control record %s: %w", key, err)
	}
	done()
	return c, nil
}

// The batch status updates (ControlMarkQueued, ControlClaimBatch,
// ControlFinishBatch) each run a fast statement first: a probe of each key
// without a lock (probeByKey) finds the records the statement's snapshot
// shows in the expected state, and the update reaches each one by the
// tuple the probe found (its ctid, a TID scan) instead of locking it and
// then probing the key a second time. Locking first cost a lock record in
// the WAL and a second visit of every tuple (bench/REPORT.md, eighth
// pass). The update still takes each record's row lock in key order, the
// order of k, so two statements cannot deadlock: its plan is a nested loop
// over the probe's results fetching each tuple (plan_test.go holds it on
// an empty table and on history; the lock's lateral join made that order
// certain, a plan makes it so). Its conditions are checked again on the
// latest version of a record that changed after the snapshot. A record that changed in that window may be left out by the
// TID scan's own recheck; the statement reports how many it found and how
// many it moved, and those it found but did not move go through the
// statement that locks first, which decides on the latest version. A
// record the snapshot does not show in the expected state cannot be in it
// later: versions only grow, and each caller's version was set with the
// state it expects.

// probeByKey is the body of a LATERAL subquery that reads cols of the
// control record of the row k names, by primary key alone, without a lock
// (OFFSET 0 as in lockByKey).
func probeByKey(cols string) string {
	return `SELECT ` + cols + ` FROM datapump_control c
				WHERE c.item_type = k.item_type AND c.item_id = k.item_id OFFSET 0`
}

// markQueuedKeys is the CTE of the keys and fenced versions $1–$3 of
// ControlMarkQueued, in key order.
const markQueuedKeys = `
		WITH k AS (
			SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS k(item_type, item_id, version)
			ORDER BY item_type, item_id
		)`

// markQueuedSet is the change Fetched → Queued of a record c.
const markQueuedSet = `
		SET status = 'Queued', version = c.version + 1, owner = '', queued_at = now(), updated_at = now()`

// markQueuedSQL is ControlMarkQueued's fast statement: how many records it
// found Fetched at their version, and how many of them it moved. (Which
// ones it did not move would cost a comparison of every record found with
// every one moved; they are rare enough to go through the fallback as a
// batch.)
var markQueuedSQL = markQueuedKeys + `, f AS MATERIALIZED (
			SELECT c.ctid AS tid, c.version
			FROM k CROSS JOIN LATERAL (` + probeByKey("c.ctid, c.version, c.status") + `) c
			WHERE c.version = k.version AND c.status = 'Fetched'
		), moved AS (
			UPDATE datapump_control c` + markQueuedSet + `
			FROM f
			WHERE c.ctid = f.tid AND c.version = f.version AND ` + keyStatus("c") + ` = 'Fetched'
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM moved)`

// markQueuedLockedSQL locks each record first and moves those still
// Fetched at their version: the fast statement's fallback.
var markQueuedLockedSQL = markQueuedKeys + `, f AS (
			SELECT c.item_type, c.item_id
			FROM k CROSS JOIN LATERAL (` + lockByKey("FOR UPDATE") + `) c
			WHERE c.version = k.version AND c.status = 'Fetched'
		)
		UPDATE datapump_control c` + markQueuedSet + `
		FROM f
		WHERE c.item_type = f.item_type AND c.item_id = f.item_id`

// ControlMarkQueued moves each record Fetched → Queued if it is still
// Fetched at the given version, and returns how many moved: one statement,
// and a second one only when a record changed while the first ran.
func (s *Store) ControlMarkQueued(ctx context.Context, items []store.Fenced) (int, error) {
	if len(items) == 0 {
		return 0, nil
	}
	types := make([]string, len(items))
	ids := make([]int64, len(items))
	versions := make([]int64, len(items))
	for i, f := range items {
		types[i], ids[i], versions[i] = f.ItemType, f.ItemID, f.Version
	}
	var found, moved int64
	if err := s.pool.QueryRow(ctx, markQueuedSQL, types, ids, versions).Scan(&found, &moved); err != nil {
		return 0, fmt.Errorf("mark queued: %w", err)
	}
	if moved == found {
		return int(moved), nil
	}
	// The records already moved are at their next version now: the
	// fallback leaves them alone.
	tag, err := s.pool.Exec(ctx, markQueuedLockedSQL, types, ids, versions)
	if err != nil {
		return int(moved), fmt.Errorf("mark queued: %w", err)
	}
	return int(moved + tag.RowsAffected()), nil
}

// claimAttempts bounds how often ControlClaimItem re-reads a record that
// changed under it before giving up.
const claimAttempts = 10

// ControlClaimItem claims one item for processing (see
// store.ControlClaimItemParams). The conditional update and the read of the
// record as it stands are one statement; when the read shows a record the
// update should have taken (it changed in between), the claim is tried again.
func (s *Store) ControlClaimItem(ctx context.Context, p store.ControlClaimItemParams) (store.ItemClaim, error) {
	src, err := s.source(p.Key.ItemType)
	if err != nil {
		return store.ItemClaim{}, fmt.Errorf("claim item %s: %w", p.Key, err)
	}
	if p.Lease <= 0 {
		return store.ItemClaim{}, fmt.Errorf("claim item %s: lease: %s must be positive", p.Key, p.Lease)
	}
	for range claimAttempts {
		claim, settled, err := s.claimExisting(ctx, p)
		if err != nil {
			return store.ItemClaim{}, fmt.Errorf("claim item %s: %w", p.Key, err)
		}
		if settled {
			if claim.Outcome == store.ClaimAbsent && claim.Control.ItemKey == (store.ItemKey{}) && p.InsertIfAbsent {
				claim, settled, err = s.claimInsert(ctx, src, p)
				if err != nil {
					return store.ItemClaim{}, fmt.Errorf("claim item %s: %w", p.Key, err)
				}
				if !settled {
					continue // another worker inserted it first: read what it made
				}
			}
			return claim, nil
		}
	}
	return store.ItemClaim{}, fmt.Errorf("claim item %s: record kept changing during %d attempts", p.Key, claimAttempts)
}

// claimExistingSQL is the one-item claim ($1, $2 the key, $3 the owner, $4
// the lease in microseconds) and the read of the record as it stands, in
// one statement.
var claimExistingSQL = `
		WITH upd AS (
			UPDATE datapump_control
			SET status = 'Processing', version = version + 1, owner = $3,
				attempts = CASE WHEN status = 'Processing' THEN attempts + 1 ELSE attempts END,
				lease_until = now() + $4 * interval '1 microsecond', next_attempt_at = NULL,
				processing_at = now(), updated_at = now()
			WHERE item_type = $1 AND item_id = $2 AND ` + claimableCondition("datapump_control") + `
			RETURNING ` + controlColumns + `
		)
		SELECT true, now(), ` + controlColumns + ` FROM upd
		UNION ALL
		SELECT false, now(), ` + controlColumns + ` FROM datapump_control
		WHERE item_type = $1 AND item_id = $2 AND NOT EXISTS (SELECT 1 FROM upd)`

// claimExisting tries the conditional update. settled is false when the
// record read back should have been claimable: it changed concurrently.
func (s *Store) claimExisting(ctx context.Context, p store.ControlClaimItemParams) (store.ItemClaim, bool, error) {
	rows, err := s.pool.Query(ctx, claimExistingSQL, p.Key.ItemType, p.Key.ItemID, p.Owner, micros(p.Lease))
	if err != nil {
		return store.ItemClaim{}, false, err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return store.ItemClaim{}, false, err
		}
		return store.ItemClaim{Outcome: store.ClaimAbsent}, true, nil
	}
	var (
		acquired bool
		now      time.Time
		c        store.Control
	)
	targets, done := controlTargets(&c)
	if err := rows.Scan(append([]any{&acquired, &now}, targets...)...); err != nil {
		return store.ItemClaim{}, false, err
	}
	done()
	rows.Close()
	if err := rows.Err(); err != nil {
		return store.ItemClaim{}, false, err
	}
	if acquired {
		return store.ItemClaim{Outcome: store.ClaimAcquired, Control: c}, true, nil
	}
	claim, settled := classifyClaim(c, now)
	return claim, settled, nil
}

// classifyClaim says why a record the claim did not take was not
// claimable at now; settled is false when it looks claimable (it changed
// while the claim ran).
func classifyClaim(c store.Control, now time.Time) (claim store.ItemClaim, settled bool) {
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

// claimableCondition is when a record (alias a) found by its key can be
// claimed for processing: Queued or Fetched and due, or Processing with an
// expired lease.
func claimableCondition(a string) string {
	return `((` + keyStatus(a) + ` IN ('Queued', 'Fetched') AND (` + a + `.next_attempt_at IS NULL OR ` + a + `.next_attempt_at <= now()))
			    OR (` + keyStatus(a) + ` = 'Processing' AND ` + a + `.lease_until <= now()))`
}

// claimInsert inserts a Processing record for an item nobody fetched (a
// source that published directly), reading its biller and created-at from
// the source row. settled is false when another worker inserted first.
func (s *Store) claimInsert(ctx context.Context, src source, p store.ControlClaimItemParams) (store.ItemClaim, bool, error) {
	row, err := s.itemSource(ctx, src, p.Key)
	if err != nil {
		return store.ItemClaim{}, false, err
	}
	origin := p.Origin
	if origin == "" {
		origin = "direct"
	}
	var c store.Control
	targets, done := controlTargets(&c)
	err = s.pool.QueryRow(ctx, `
		INSERT INTO datapump_control (item_type, item_id, biller_id, status, version, attempts, owner, lease_until,
			origin, source_created_at, created_at, updated_at, processing_at)
		VALUES ($1, $2, $3, 'Processing', 1, 0, $4, now() + $5 * interval '1 microsecond', $6, $7, now(), now(), now())
		ON CONFLICT (item_type, item_id) DO NOTHING
		RETURNING `+controlColumns,
		p.Key.ItemType, p.Key.ItemID, row.BillerID, p.Owner, micros(p.Lease), origin, nullTime(row.CreatedAt)).Scan(targets...)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ItemClaim{}, false, nil
	}
	if err != nil {
		return store.ItemClaim{}, false, fmt.Errorf("insert control record: %w", err)
	}
	done()
	return store.ItemClaim{Outcome: store.ClaimAcquired, Control: c}, true, nil
}

// whereHeld is the fencing condition of every update by a claim holder:
// the record of the key $1, $2 at version $3, still Processing.
var whereHeld = `
		WHERE item_type = $1 AND item_id = $2 AND version = $3 AND ` + keyStatus("datapump_control") + ` = 'Processing'`

// extendLeaseSQL pushes a held lease to $4 microseconds from now.
var extendLeaseSQL = `
		UPDATE datapump_control
		SET lease_until = now() + $4 * interval '1 microsecond', updated_at = now()` + whereHeld

// ControlExtendLease pushes the lease of a Processing record forward; false
// means the caller no longer holds it. The version does not change.
func (s *Store) ControlExtendLease(ctx context.Context, f store.Fenced, lease time.Duration) (bool, error) {
	if lease <= 0 {
		return false, fmt.Errorf("extend lease %s: lease: %s must be positive", f.ItemKey, lease)
	}
	tag, err := s.pool.Exec(ctx, extendLeaseSQL, f.ItemType, f.ItemID, f.Version, micros(lease))
	if err != nil {
		return false, fmt.Errorf("extend lease %s: %w", f.ItemKey, err)
	}
	return tag.RowsAffected() == 1, nil
}

// finishSQL ends a held claim in status $4, replacing the last error only
// with a non-empty $5.
var finishSQL = `
		UPDATE datapump_control
		SET status = $4, version = version + 1, lease_until = NULL, updated_at = now(),
			last_error = CASE WHEN $5 <> '' THEN $5 ELSE last_error END,
			processed_at = CASE WHEN $4 = 'Processed' THEN now() END,
			failed_at = CASE WHEN $4 = 'Failed' THEN now() END` + whereHeld

// ControlFinish ends a Processing claim as Processed or Failed; false means
// the caller no longer held it and nothing changed.
func (s *Store) ControlFinish(ctx context.Context, p store.ControlFinishParams) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	tag, err := s.pool.Exec(ctx, finishSQL, p.ItemType, p.ItemID, p.Version, string(p.Status), p.Error)
	if err != nil {
		return false, fmt.Errorf("finish %s: %w", p.ItemKey, err)
	}
	return tag.RowsAffected() == 1, nil
}

// releaseSQL returns a held claim to Queued, due $4 microseconds from now,
// with $5 as its last error.
var releaseSQL = `
		UPDATE datapump_control
		SET status = 'Queued', version = version + 1, attempts = attempts + 1, owner = '', lease_until = NULL,
			next_attempt_at = now() + $4 * interval '1 microsecond', last_error = $5,
			queued_at = now(), updated_at = now()` + whereHeld

// ControlRelease hands a Processing claim back for a later retry:
// Processing → Queued, attempts+1, next attempt after RetryIn.
func (s *Store) ControlRelease(ctx context.Context, p store.ControlReleaseParams) (bool, error) {
	if p.RetryIn < 0 {
		return false, fmt.Errorf("release %s: retry_in: %s must not be negative", p.ItemKey, p.RetryIn)
	}
	tag, err := s.pool.Exec(ctx, releaseSQL, p.ItemType, p.ItemID, p.Version, micros(p.RetryIn), p.Error)
	if err != nil {
		return false, fmt.Errorf("release %s: %w", p.ItemKey, err)
	}
	return tag.RowsAffected() == 1, nil
}

// skipSQL marks the record of the key $1, $2 Skipped with $3 as its last
// error, if it has not been claimed yet.
var skipSQL = `
		UPDATE datapump_control
		SET status = 'Skipped', version = version + 1, owner = '', lease_until = NULL, last_error = $3, updated_at = now()
		WHERE item_type = $1 AND item_id = $2 AND ` + keyStatus("datapump_control") + ` IN ('New', 'Fetched', 'Queued')`

// ControlSkip marks a New, Fetched or Queued record Skipped with the reason
// as its last error; false if it was in any other state or absent.
func (s *Store) ControlSkip(ctx context.Context, key store.ItemKey, reason string) (bool, error) {
	tag, err := s.pool.Exec(ctx, skipSQL, key.ItemType, key.ItemID, reason)
	if err != nil {
		return false, fmt.Errorf("skip %s: %w", key, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ControlListStuck lists Fetched/Queued records not updated for OlderThan
// whose retry time (if any) has passed, oldest first, and bumps their
// updated-at. Rows another transaction holds are skipped, not waited for.
func (s *Store) ControlListStuck(ctx context.Context, p store.ControlListStuckParams) ([]store.Control, error) {
	if p.OlderThan < 0 {
		return nil, fmt.Errorf("list stuck: older_than: %s must not be negative", p.OlderThan)
	}
	rows, err := s.pool.Query(ctx, `
		WITH stuck AS (
			SELECT item_type, item_id, updated_at AS was_updated_at
			FROM datapump_control
			WHERE status IN ('Fetched', 'Queued') AND updated_at <= now() - $1 * interval '1 microsecond'
			  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
			ORDER BY updated_at, item_type, item_id
			LIMIT $2
			FOR UPDATE SKIP LOCKED
		), upd AS (
			UPDATE datapump_control c SET updated_at = now()
			FROM stuck
			WHERE c.item_type = stuck.item_type AND c.item_id = stuck.item_id
			RETURNING `+prefixed("c")+`, stuck.was_updated_at
		)
		SELECT `+controlColumns+` FROM upd ORDER BY was_updated_at, item_type, item_id`,
		micros(p.OlderThan), limit(p.Limit))
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	out, err := collectControls(rows)
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	return out, nil
}

// ControlReclaimExpired moves Processing records whose lease expired back
// to Queued (attempts+1, owner cleared), soonest-expired first, and returns
// them. Rows another transaction holds are skipped, not waited for.
func (s *Store) ControlReclaimExpired(ctx context.Context, p store.ControlReclaimExpiredParams) ([]store.Control, error) {
	rows, err := s.pool.Query(ctx, `
		WITH expired AS (
			SELECT item_type, item_id, lease_until AS was_lease_until
			FROM datapump_control
			WHERE status = 'Processing' AND lease_until <= now()
			ORDER BY lease_until, item_type, item_id
			LIMIT $1
			FOR UPDATE SKIP LOCKED
		), upd AS (
			UPDATE datapump_control c
			SET status = 'Queued', version = c.version + 1, attempts = c.attempts + 1, owner = '', lease_until = NULL,
				next_attempt_at = NULL, last_error = 'lease of ' || c.owner || ' expired',
				queued_at = now(), updated_at = now()
			FROM expired
			WHERE c.item_type = expired.item_type AND c.item_id = expired.item_id AND c.status = 'Processing'
			RETURNING `+prefixed("c")+`, expired.was_lease_until
		)
		SELECT `+controlColumns+` FROM upd ORDER BY was_lease_until, item_type, item_id`,
		limit(p.Limit))
	if err != nil {
		return nil, fmt.Errorf("reclaim expired leases: %w", err)
	}
	out, err := collectControls(rows)
	if err != nil {
		return nil, fmt.Errorf("reclaim expired leases: %w", err)
	}
	return out, nil
}

// limit turns a non-positive limit into SQL NULL: no limit.
func limit(n int) any {
	if n <= 0 {
		return nil
	}
	return n
}

// ControlList lists control records for operators, newest first.
func (s *Store) ControlList(ctx context.Context, p store.ControlListParams) ([]store.Control, error) {
	statuses := make([]string, len(p.Statuses))
	for i, st := range p.Statuses {
		if !st.Valid() {
			return nil, fmt.Errorf("list control records: status: %q is not a known status", st)
		}
		statuses[i] = string(st)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT `+controlColumns+`
		FROM datapump_control
		WHERE ($1 = '' OR biller_id = $1) AND ($2 = '' OR item_type = $2)
		  AND (cardinality($3::text[]) = 0 OR status = ANY($3::text[]))
		ORDER BY created_at DESC, item_type DESC, item_id DESC
		LIMIT $4`,
		p.BillerID, p.ItemType, statuses, limit(p.Limit))
	if err != nil {
		return nil, fmt.Errorf("list control records: %w", err)
	}
	out, err := collectControls(rows)
	if err != nil {
		return nil, fmt.Errorf("list control records: %w", err)
	}
	return out, nil
}

// countByStatusSQL counts records per biller and status ($1: the statuses
// in pipeline order, for the ORDER BY). Without Processed records it
// filters on the literal status <> 'Processed', the predicate of the
// partial index datapump_control_open_biller_status_idx (migration 00005),
// which the planner can match only against a constant: the count reads the
// open records from that index and never the history. With them it reads
// the whole table.
func countByStatusSQL(withProcessed bool) string {
	where := `
		WHERE status <> 'Processed'`
	if withProcessed {
		where = ``
	}
	return `
		SELECT biller_id, status, count(*)
		FROM datapump_control` + where + `
		GROUP BY biller_id, status
		ORDER BY biller_id, array_position($1::text[], status), status`
}

// statusOrder is store.Statuses as text, the $1 of countByStatusSQL.
func statusOrder() []string {
	order := make([]string, len(store.Statuses))
	for i, st := range store.Statuses {
		order[i] = string(st)
	}
	return order
}

// ControlCountByStatus counts records per biller and status, ordered by
// biller and then pipeline order of the status; Processed records only
// WithProcessed.
func (s *Store) ControlCountByStatus(ctx context.Context, p store.ControlCountParams) ([]store.StatusCount, error) {
	rows, err := s.pool.Query(ctx, countByStatusSQL(p.WithProcessed), statusOrder())
	if err != nil {
		return nil, fmt.Errorf("count control records: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.StatusCount, error) {
		var c store.StatusCount
		var st string
		err := r.Scan(&c.BillerID, &st, &c.Count)
		c.Status = store.Status(st)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("count control records: %w", err)
	}
	return out, nil
}

// retryFilter selects the Failed records a retry names: $1 biller, $2 item
// type (empty for any), $3 and $4 the failed-at range (NULL for open), $5
// and $6 the keys (empty arrays for any), $7 the limit (NULL for none).
const retryFilter = `status = 'Failed'
	AND ($1 = '' OR biller_id = $1) AND ($2 = '' OR item_type = $2)
	AND ($3::timestamptz IS NULL OR failed_at >= $3) AND ($4::timestamptz IS NULL OR failed_at < $4)
	AND (cardinality($5::text[]) = 0 OR (item_type, item_id) IN (SELECT * FROM unnest($5::text[], $6::bigint[])))`

// ControlRetry moves Failed records matching the filter back to Queued
// (attempts reset to 0, no owner, lease or retry delay, version+1, last
// error kept), oldest failure first up to Limit (zero: no limit), in one
// statement, and returns them as they now are. The move stays conditional
// on the record being Failed, and records a concurrent retry holds are
// left to it. With DryRun it only reads, and returns the records that
// would move as they stand.
func (s *Store) ControlRetry(ctx context.Context, p store.ControlRetryParams) ([]store.Control, error) {
	types := make([]string, len(p.Keys))
	ids := make([]int64, len(p.Keys))
	for i, k := range p.Keys {
		types[i], ids[i] = k.ItemType, k.ItemID
	}
	args := []any{p.BillerID, p.ItemType, nullTime(p.FailedFrom), nullTime(p.FailedTo), types, ids, limit(p.Limit)}
	q := `
		SELECT ` + controlColumns + `
		FROM datapump_control
		WHERE ` + retryFilter + `
		ORDER BY failed_at, item_type, item_id
		LIMIT $7`
	what := "retry (dry run)"
	if !p.DryRun {
		what = "retry"
		q = `
		WITH pick AS (
			SELECT item_type, item_id
			FROM datapump_control
			WHERE ` + retryFilter + `
			ORDER BY failed_at, item_type, item_id
			LIMIT $7
			FOR UPDATE SKIP LOCKED
		), upd AS (
			UPDATE datapump_control c
			SET status = 'Queued', version = c.version + 1, attempts = 0, owner = '', lease_until = NULL,
				next_attempt_at = NULL, queued_at = now(), updated_at = now()
			FROM pick
			WHERE c.item_type = pick.item_type AND c.item_id = pick.item_id AND c.status = 'Failed'
			RETURNING ` + prefixed("c") + `
		)
		SELECT ` + controlColumns + ` FROM upd ORDER BY failed_at, item_type, item_id`
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out, err := collectControls(rows)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// claimBatchSQL is ControlClaimBatch's statement ($1–$4: keys, owners,
// leases in microseconds): each item's position, whether it was claimed,
// the database clock and the record as it stands. An item named twice is
// claimed for its first mention; the later one reads the record as it
// was and goes through ControlClaimItem.
var claimBatchSQL = `
		WITH k AS (
			SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) WITH ORDINALITY AS k(item_type, item_id, owner, lease, ord)
		), first AS (
			SELECT DISTINCT ON (item_type, item_id) * FROM k ORDER BY item_type, item_id, ord
		), pick AS MATERIALIZED (
			-- The key compared once more (the probe found it by key) is
			-- for the planner: it counts the claimable records as few, as
			-- it does the records found at a version, and so fetches each
			-- one by its tuple below rather than scanning the whole table
			-- for a handful when the table looks small.
			SELECT c.ctid AS tid, c.version, k.owner, k.lease, k.ord
			FROM first k CROSS JOIN LATERAL (` + probeByKey("c.ctid, c.item_id, c.version, c.status, c.next_attempt_at, c.lease_until") + `) c
			WHERE ` + claimableCondition("c") + ` AND c.item_id = k.item_id
		), upd AS (
			UPDATE datapump_control c
			SET status = 'Processing', version = c.version + 1, owner = pick.owner,
				attempts = CASE WHEN c.status = 'Processing' THEN c.attempts + 1 ELSE c.attempts END,
				lease_until = now() + pick.lease * interval '1 microsecond', next_attempt_at = NULL,
				processing_at = now(), updated_at = now()
			FROM pick
			WHERE c.ctid = pick.tid AND c.version = pick.version AND ` + claimableCondition("c") + `
			RETURNING pick.ord, ` + prefixed("c") + `
		)
		SELECT upd.ord, true, now(), ` + prefixed("upd") + ` FROM upd
		UNION ALL
		SELECT k.ord, false, now(), ` + prefixed("c") + `
		FROM k CROSS JOIN LATERAL (` + probeByKey(controlColumns) + `) c
		WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.ord = k.ord)`

// ControlClaimBatch claims several items for processing with one
// statement for the records that exist and are claimable, in key order so
// overlapping batches cannot deadlock; it finds them without a lock, as the
// fast statements above do. An item the statement could not settle — no
// record yet (a direct item to insert), or a record that changed while the
// statement ran — goes through ControlClaimItem, which decides on the
// latest version.
func (s *Store) ControlClaimBatch(ctx context.Context, ps []store.ControlClaimItemParams) ([]store.ItemClaimResult, error) {
	out := make([]store.ItemClaimResult, len(ps))
	if len(ps) == 0 {
		return out, nil
	}
	var (
		types, owners []string
		ids, leases   []int64
		index         []int // statement position → ps position
	)
	for i, p := range ps {
		if _, err := s.source(p.Key.ItemType); err != nil {
			out[i].Err = fmt.Errorf("claim item %s: %w", p.Key, err)
			continue
		}
		if p.Lease <= 0 {
			out[i].Err = fmt.Errorf("claim item %s: lease: %s must be positive", p.Key, p.Lease)
			continue
		}
		types, ids, owners, leases = append(types, p.Key.ItemType), append(ids, p.Key.ItemID), append(owners, p.Owner), append(leases, micros(p.Lease))
		index = append(index, i)
	}
	settled := make([]bool, len(ps))
	if len(index) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, claimBatchSQL,
		types, ids, owners, leases)
	if err != nil {
		return nil, fmt.Errorf("claim items: %w", err)
	}
	for rows.Next() {
		var (
			ord      int
			acquired bool
			now      time.Time
			c        store.Control
		)
		targets, done := controlTargets(&c)
		if err := rows.Scan(append([]any{&ord, &acquired, &now}, targets...)...); err != nil {
			rows.Close()
			return nil, fmt.Errorf("claim items: %w", err)
		}
		done()
		i := index[ord-1]
		if acquired {
			out[i].ItemClaim, settled[i] = store.ItemClaim{Outcome: store.ClaimAcquired, Control: c}, true
			continue
		}
		out[i].ItemClaim, settled[i] = classifyClaim(c, now)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim items: %w", err)
	}
	for i, p := range ps {
		if out[i].Err != nil || settled[i] {
			continue
		}
		out[i].ItemClaim, out[i].Err = s.ControlClaimItem(ctx, p)
	}
	return out, nil
}

// finishNamed is the CTE f of ControlFinishBatch's claims ($1–$5: keys,
// versions, statuses, errors), each named once, in key order.
const finishNamed = `
		WITH named AS (
			SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) WITH ORDINALITY AS f(item_type, item_id, version, status, error, ord)
		), f AS (
			-- A claim named twice is finished by its first mention, as one call after the other would.
			SELECT DISTINCT ON (item_type, item_id, version) * FROM named ORDER BY item_type, item_id, version, ord
		)`

// finishSet ends the claim on record c as pick says.
const finishSet = `
		SET status = pick.status, version = c.version + 1, lease_until = NULL, updated_at = now(),
			last_error = CASE WHEN pick.error <> '' THEN pick.error ELSE c.last_error END,
			processed_at = CASE WHEN pick.status = 'Processed' THEN now() END,
			failed_at = CASE WHEN pick.status = 'Failed' THEN now() END`

// finishBatchSQL is ControlFinishBatch's fast statement: how many claims
// it found still held, and the positions of those it ended.
var finishBatchSQL = finishNamed + `, pick AS MATERIALIZED (
			SELECT c.ctid AS tid, c.version, k.status, k.error, k.ord
			FROM (SELECT * FROM f ORDER BY item_type, item_id) k CROSS JOIN LATERAL (` + probeByKey("c.ctid, c.version, c.status") + `) c
			WHERE c.version = k.version AND c.status = 'Processing'
		), done AS (
			UPDATE datapump_control c` + finishSet + `
			FROM pick
			WHERE c.ctid = pick.tid AND c.version = pick.version AND ` + keyStatus("c") + ` = 'Processing'
			RETURNING pick.ord
		)
		SELECT (SELECT count(*) FROM pick), coalesce((SELECT array_agg(ord) FROM done), '{}')`

// finishBatchLockedSQL locks each record first and ends the claims still
// held: the fast statement's fallback. It returns the claims it ended.
var finishBatchLockedSQL = finishNamed + `, pick AS (
			SELECT c.item_type, c.item_id, k.status, k.error, k.ord
			FROM (SELECT * FROM f ORDER BY item_type, item_id) k CROSS JOIN LATERAL (` + lockByKey("FOR UPDATE") + `) c
			WHERE c.version = k.version AND c.status = 'Processing'
		)
		UPDATE datapump_control c` + finishSet + `
		FROM pick
		WHERE c.item_type = pick.item_type AND c.item_id = pick.item_id
		RETURNING pick.ord`

// finishArgs are the statement arguments of ControlFinishBatch's claims.
func finishArgs(ps []store.ControlFinishParams) ([]any, error) {
	types := make([]string, len(ps))
	ids := make([]int64, len(ps))
	versions := make([]int64, len(ps))
	statuses := make([]string, len(ps))
	errs := make([]string, len(ps))
	for i, p := range ps {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		types[i], ids[i], versions[i], statuses[i], errs[i] = p.ItemType, p.ItemID, p.Version, string(p.Status), p.Error
	}
	return []any{types, ids, versions, statuses, errs}, nil
}

// ControlFinishBatch ends several Processing claims with one statement,
// and a second one only for claims whose records changed while the first
// ran; ok[i] is false when ps[i] no longer held its claim.
func (s *Store) ControlFinishBatch(ctx context.Context, ps []store.ControlFinishParams) ([]bool, error) {
	ok := make([]bool, len(ps))
	if len(ps) == 0 {
		return ok, nil
	}
	args, err := finishArgs(ps)
	if err != nil {
		return nil, err
	}
	var (
		held  int64
		ended []int64
	)
	if err := s.pool.QueryRow(ctx, finishBatchSQL, args...).Scan(&held, &ended); err != nil {
		return nil, fmt.Errorf("finish items: %w", err)
	}
	for _, o := range ended {
		ok[o-1] = true
	}
	if int64(len(ended)) == held {
		return ok, nil
	}
	// Those ended are at their next version now; the fallback gets the
	// rest, and ends those it finds still held.
	var again []int // positions in ps
	for i := range ps {
		if !ok[i] {
			again = append(again, i)
		}
	}
	retry := make([]store.ControlFinishParams, len(again))
	for j, i := range again {
		retry[j] = ps[i]
	}
	if args, err = finishArgs(retry); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, finishBatchLockedSQL, args...)
	if err != nil {
		return nil, fmt.Errorf("finish items: %w", err)
	}
	ords, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("finish items: %w", err)
	}
	for _, o := range ords {
		ok[again[o-1]] = true
	}
	return ok, nil
}
