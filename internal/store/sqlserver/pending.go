package sqlserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/datapump/datapump/internal/store"
)

// sourceReadHints are the hints on every pending scan of an application's
// table. READPAST skips a row another transaction holds — a row an
// application is still inserting is invisible until it commits, as it would
// be to a snapshot, but neither waited for (the scan never blocks the
// applications, nor they it) nor read dirty (NOLOCK could hand out an item
// whose insert then rolls back). A row skipped because an application is
// updating it is found by the next poll. READCOMMITTEDLOCK makes the scan a
// locking read, which READPAST requires when the database has
// READ_COMMITTED_SNAPSHOT on. The anti-join probe into datapump_control
// carries no hint: a record being written by a concurrent claimer is waited
// for briefly and then counted as it committed.
const sourceReadHints = `WITH (READCOMMITTEDLOCK, READPAST)`

// pendingCondition is the anti-join that makes a source row pending: no
// control record, or a New one. It seeks datapump_control's clustered key.
func pendingCondition(src *source, control, itemType string) string {
	return `NOT EXISTS (SELECT 1 FROM ` + control + ` AS c WHERE c.item_type = ` + itemType +
		` AND c.item_id = s.` + src.key + ` AND c.status <> N'New')`
}

// billerCutover is one element of the JSON array of billers OPENJSON reads.
type billerCutover struct {
	B string `json:"b"`
	C string `json:"c"`
}

// billersJSON encodes billers and their cut-overs (UTC, ISO 8601), each
// biller once, the first occurrence winning.
func billersJSON(billers []store.BillerCutover) (string, error) {
	out := make([]billerCutover, 0, len(billers))
	seen := map[string]bool{}
	for _, b := range billers {
		if seen[b.BillerID] {
			continue
		}
		seen[b.BillerID] = true
		out = append(out, billerCutover{B: b.BillerID, C: b.CutoverAt.UTC().Format(jsonTimeLayout)})
	}
	j, err := json.Marshal(out)
	return string(j), err
}

// billersCTE is the CTE b (biller_id, cutover_at) read from a JSON
// parameter. biller_id is varchar: compared with an application's varchar
// biller column it keeps that column's index seekable.
func billersCTE(p *params, billers string) string {
	return `WITH b AS (
    SELECT j.biller_id, j.cutover_at
    FROM OPENJSON(` + p.add(billers) + `) WITH (biller_id varchar(128) '$.b', cutover_at datetime2(7) '$.c') AS j
)`
}

// watermarkJoin joins each biller of the CTE b to its watermark w for the
// item type in placeholder itemType, unless the watermark was computed
// under a later cut-over than the biller's now. The biller id from
// OPENJSON carries the database's collation; it is compared in the
// watermark key's binary collation, so the two do not conflict and the
// probe stays a seek of the key. indent starts every line but the first.
func (s *Store) watermarkJoin(itemType, indent string) string {
	return `LEFT JOIN ` + s.t.watermark + ` AS w
` + indent + `  ON w.biller_id = b.biller_id COLLATE Latin1_General_100_BIN2 AND w.item_type = ` + itemType + `
` + indent + ` AND w.cutover_at <= b.cutover_at`
}

// watermarkRead is the pending count's read of the watermarks: it joins
// each biller of the CTE b to its watermark row r for the item type in
// placeholder itemType, by key whatever its cut-over, and derives from that
// one read w, the watermark the scan may start from as watermarkJoin has
// it (NULL when r was computed under a later cut-over than the biller's
// now, or without a row), or NULL when placeholder full is set. r's
// updated_at and low_created_at go into @scan as the version of the row
// the scan started from, which the advance compares with (see
// pendingCountSQL); reading them in a second probe could see a newer row
// than the scan started from.
func (s *Store) watermarkRead(itemType, full string) string {
	return `LEFT JOIN ` + s.t.watermark + ` AS r
  ON r.biller_id = b.biller_id COLLATE Latin1_General_100_BIN2 AND r.item_type = ` + itemType + `
CROSS APPLY (SELECT CASE WHEN r.cutover_at <= b.cutover_at AND ` + full + ` = 0 THEN r.low_created_at END AS low_created_at) AS w`
}

// scanFrom is where the pending scan of one biller and item type starts:
// at start, or at its watermark w when that is later (w is NULL without
// one). T-SQL has GREATEST only from SQL Server 2022; a CASE of the outer
// row's values keeps the seek on the source's (biller, created_at) index.
func scanFrom(start string) string {
	return `CASE WHEN w.low_created_at > ` + start + ` THEN w.low_created_at ELSE ` + start + ` END`
}

// scanTableVar declares @scan, one row per scanned biller and item type,
// with the updated_at and low_created_at of its watermark row as the scan
// read it (NULL without one).
const scanTableVar = `DECLARE @scan TABLE (
    biller_id nvarchar(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
    item_type nvarchar(64) COLLATE Latin1_General_100_BIN2 NOT NULL,
    cutover_at datetime2(7) NOT NULL, pending bigint NOT NULL, oldest datetime2(7) NULL,
    read_updated_at datetime2(3) NULL, read_low_created_at datetime2(7) NULL,
    PRIMARY KEY (biller_id, item_type)
);`

// watermarkLow is the watermark a scanned row of @scan (sc) moves to: its
// oldest pending created-at, or @horizon when that is earlier or nothing
// is pending.
const watermarkLow = `CASE WHEN sc.oldest < @horizon THEN sc.oldest ELSE @horizon END`

// pendingCountSQL counts pending items and finds the oldest per biller in
// ONE batch over every item type: billers and cut-overs arrive as a JSON
// array; for each biller and item type, the source table is read from the
// watermark, or from the cut-over when full or that is later — a seek on an
// index over (biller, created_at) — with the anti-join against
// datapump_control's primary key, into @scan. With a positive lag the batch
// then moves every scanned watermark to the oldest pending created-at or to
// lag before the database clock, whichever is earlier, recording the
// cut-over it ran under: an UPDATE of the existing watermarks (for a
// regular count, only of those unchanged since its scan read them), then an
// insert of the missing ones.
//
// Locking review: the scan is a read; the source tables with
// sourceReadHints (no blocking on the applications' open inserts, no dirty
// reads), the watermarks with a plain read by key (watermarkRead), whose
// updated_at and low_created_at it keeps in @scan. The advance runs outside
// a transaction, each statement committing on its own, so another count can
// write a watermark between this one's scan and its advance: a full sweep
// that lowered it to a row committed late, which a regular count scanning
// from the old watermark never saw. So a regular count's UPDATE is a
// compare-and-set: it moves a watermark only while the row still has the
// updated_at and low_created_at its scan read, checked on the row under the
// UPDATE's own U lock against the latest committed version (an UPDATE
// locks the rows it changes even under READ_COMMITTED_SNAPSHOT), and
// leaves a row that changed to the next count. The low value is compared
// as well as updated_at, which keeps only milliseconds and could be shared
// by two writes in one millisecond: a row that still has both holds what
// the scan assumed below where it started (nothing in the port makes a row
// below a watermark pending again). A full sweep's UPDATE is
// unconditional: it scanned from the cut-over, so what it writes does not
// rest on what it read, and lowering a watermark is always safe. The
// UPDATE seeks the watermark key from @scan (FORCESEEK, in key order) and
// holds its exclusive key locks only while it runs; the insert checks each
// key WITH (UPDLOCK, HOLDLOCK), so a concurrent advancer inserting the same
// key waits and then skips it instead of failing on the duplicate (a
// regular count only inserts a watermark it read as missing, so it scanned
// from the cut-over). The insert is not a MERGE, which without HOLDLOCK is
// not atomic. A batch that fails half way leaves some watermarks where they
// were, which is safe, and is run again whole, scan and all, when it was a
// deadlock victim.
func (s *Store) pendingCountSQL(billers string, full bool, lag time.Duration) (string, params, error) {
	lagMS, err := millis("watermark_lag", lag)
	if err != nil {
		return "", nil, err
	}
	var p params
	cte := billersCTE(&p, billers)
	fullArg := p.add(full)
	advance := ""
	if lag > 0 {
		unchanged := `
WHERE w.updated_at = sc.read_updated_at AND w.low_created_at = sc.read_low_created_at`
		if full {
			unchanged = ""
		}
		advance = `
` + declareNow + `
DECLARE @horizon datetime2(7) = DATEADD(millisecond, -` + p.add(lagMS) + `, @now);
UPDATE w
SET cutover_at = sc.cutover_at, low_created_at = ` + watermarkLow + `, updated_at = @now
FROM @scan AS sc
JOIN ` + s.t.watermark + ` AS w WITH (FORCESEEK) ON w.biller_id = sc.biller_id AND w.item_type = sc.item_type` + unchanged + `;
INSERT INTO ` + s.t.watermark + ` (biller_id, item_type, cutover_at, low_created_at, updated_at)
SELECT sc.biller_id, sc.item_type, sc.cutover_at, ` + watermarkLow + `, @now
FROM @scan AS sc
WHERE NOT EXISTS (SELECT 1 FROM ` + s.t.watermark + ` AS w WITH (UPDLOCK, HOLDLOCK, FORCESEEK)
                  WHERE w.biller_id = sc.biller_id AND w.item_type = sc.item_type)
ORDER BY sc.biller_id, sc.item_type;`
	}
	parts := make([]string, 0, len(s.order))
	for _, src := range s.order {
		typ := p.add(src.ItemType)
		parts = append(parts, `SELECT b.biller_id, `+typ+`, b.cutover_at, n.pending, n.oldest, r.updated_at, r.low_created_at
FROM b
`+s.watermarkRead(typ, fullArg)+`
CROSS APPLY (
    SELECT COUNT_BIG(*) AS pending, MIN(CAST(s.`+src.createdAt+` AS datetime2(7))) AS oldest
    FROM `+src.table+` AS s `+sourceReadHints+`
    WHERE s.`+src.biller+` = b.biller_id AND s.`+src.createdAt+` >= `+scanFrom("b.cutover_at")+src.typeFilter(&p, "s")+`
      AND `+pendingCondition(src, s.t.control, typ)+`
) AS n`)
	}
	q := `SET NOCOUNT ON;
` + scanTableVar + `
` + cte + `
INSERT INTO @scan (biller_id, item_type, cutover_at, pending, oldest, read_updated_at, read_low_created_at)
` + strings.Join(parts, "\nUNION ALL\n") + `;` + advance + `
SELECT sc.biller_id, SUM(sc.pending) AS pending, MIN(sc.oldest) AS oldest
FROM @scan AS sc
GROUP BY sc.biller_id
HAVING SUM(sc.pending) > 0
ORDER BY sc.biller_id;`
	return q, p, nil
}

// PendingCount counts pending items per biller (no control record, or a
// New one; created at or after the biller's cut-over) and finds the oldest
// one's created-at, with one batch over every item type that reads each
// (biller, item type) from its watermark, or from the cut-over when Full or
// that is later; with a WatermarkLag the batch also moves the scanned
// watermarks (see pendingCountSQL). Billers without pending items are left
// out; a biller named twice counts once, with its first cut-over.
func (s *Store) PendingCount(ctx context.Context, p store.PendingCountParams) ([]store.BillerPending, error) {
	if len(p.Billers) == 0 || len(s.order) == 0 {
		return nil, nil
	}
	billers, err := billersJSON(p.Billers)
	if err != nil {
		return nil, fmt.Errorf("count pending: %w", err)
	}
	q, args, err := s.pendingCountSQL(billers, p.Full, p.WatermarkLag)
	if err != nil {
		return nil, fmt.Errorf("count pending: %w", err)
	}
	var out []store.BillerPending
	err = s.retryDeadlock(ctx, func() error {
		out, err = s.pendingCountOnce(ctx, q, args)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("count pending: %w", err)
	}
	return out, nil
}

func (s *Store) pendingCountOnce(ctx context.Context, q string, args []any) ([]store.BillerPending, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.BillerPending
	for rows.Next() {
		var bp store.BillerPending
		var oldest sql.NullTime
		if err := rows.Scan(&bp.BillerID, &bp.Pending, &oldest); err != nil {
			return nil, err
		}
		bp.OldestCreatedAt = utc(oldest)
		out = append(out, bp)
	}
	return out, rows.Err()
}

// candidateColumns selects one source row as a candidate: item type, key,
// biller and created-at, cast to the types of the batch's table variables
// (COLLATE DATABASE_DEFAULT keeps UNION ALL of tables with different
// collations from conflicting).
func candidateColumns(src *source, itemType string) string {
	return `CAST(` + itemType + ` AS nvarchar(64)) AS item_type, CAST(s.` + src.key + ` AS bigint) AS item_id,
            CAST(s.` + src.biller + ` AS nvarchar(128)) COLLATE DATABASE_DEFAULT AS biller_id,
            CAST(s.` + src.createdAt + ` AS datetime2(7)) AS created_at`
}

// claimPendingSQL is the biller consumer's claim, one batch in one READ
// COMMITTED transaction:
//
//  1. Candidates: per item type the oldest @limit pending rows of the
//     biller from @start (the later of the cut-over and From), or from the
//     item type's watermark when that is later and was computed under the
//     cut-over or an earlier one (TOP with ORDER BY in a derived table, an
//     ordered seek on (biller, created_at) that stops early), then the
//     oldest @limit overall by created-at, item type, id, into @cand, with
//     whether a (New) record exists.
//  2. New → Fetched for candidates with a New record, through a CTE
//     SELECT TOP (@limit) … FROM datapump_control WITH (ROWLOCK, UPDLOCK,
//     READPAST) … ORDER BY key, then UPDATE of the CTE with OUTPUT … INTO.
//  3. Insert-if-absent as Fetched for candidates without a record, with the
//     existence check WITH (UPDLOCK, HOLDLOCK).
//  4. Return the claimed rows in candidate order, and the candidate count.
//
// Locking review. Step 1 reads the applications' tables with
// sourceReadHints (an uncommitted insert is skipped and found by a later
// claim — the anti-join, not an id cursor, guarantees that) and the
// watermark with a plain read of one key (it waits only for an advance
// that is writing that key), and holds no locks afterwards. Step 2 seeks datapump_control by primary key from
// @cand (so it locks only candidate rows; a scan of the table under UPDLOCK
// would lock, and at 5000 locks escalate to, the whole history); UPDLOCK
// holds each taken row to commit, READPAST skips a New row another claimer
// is taking instead of waiting (it is that claimer's), ROWLOCK keeps locks
// on rows, READCOMMITTEDLOCK keeps READPAST legal under
// READ_COMMITTED_SNAPSHOT, and the status is re-checked on the locked row.
// FORCESEEK (here and in step 3) pins the access to seeks on the clustered
// key: a small table could otherwise tempt the optimizer into a scan, which
// under UPDLOCK or HOLDLOCK would lock every row or range it passes.
// Step 3's NOT EXISTS WITH (UPDLOCK, HOLDLOCK) takes a RangeS-U lock on the
// key range of each absent item until commit: a concurrent claimer of the
// same item waits there, then sees the committed record and skips it, so
// no item gets two records or two claimers; candidates are probed in key
// order (@cand's primary key), so claimers lock ranges in one order, and
// step 3 never probes the New rows step 2 may hold. The insert is not a
// MERGE, which without HOLDLOCK is not atomic. A deadlock victim (1205) or a
// duplicate key (2627/2601: another claimer won) rolls the transaction back
// and the claim runs again.
func (s *Store) claimPendingSQL(p store.ControlClaimPendingParams) (string, params) {
	var a params
	biller := a.add(varchar(p.BillerID))
	cutover := a.add(cutoverArg(p.CutoverAt))
	limit := a.add(int64(p.Limit))
	owner := a.add(p.Owner)
	from := a.add(timeArg(p.From))
	parts := make([]string, 0, len(s.order))
	for i, src := range s.order {
		typ := a.add(src.ItemType)
		// MAX makes w exactly one row (NULL without a watermark), so the
		// cross join keeps every source row.
		parts = append(parts, fmt.Sprintf(`    SELECT t%d.* FROM (
        SELECT TOP (%s) %s,
            CASE WHEN EXISTS (SELECT 1 FROM %s AS r WHERE r.item_type = %s AND r.item_id = s.%s) THEN 1 ELSE 0 END AS has_record
        FROM (SELECT MAX(wm.low_created_at) AS low_created_at FROM %s AS wm
              WHERE wm.biller_id = %s AND wm.item_type = %s AND wm.cutover_at <= CAST(%s AS datetime2(7))) AS w
        CROSS JOIN %s AS s %s
        WHERE s.%s = %s AND s.%s >= %s%s
          AND %s
        ORDER BY s.%s, s.%s
    ) AS t%d`,
			i, limit, candidateColumns(src, typ),
			s.t.control, typ, src.key,
			s.t.watermark, biller, typ, cutover,
			src.table, sourceReadHints,
			src.biller, biller, src.createdAt, scanFrom("@start"), src.typeFilter(&a, "s"),
			pendingCondition(src, s.t.control, typ),
			src.createdAt, src.key, i))
	}
	q := `SET NOCOUNT ON;
` + declareNow + `
DECLARE @start datetime2(7) = (SELECT MAX(v.at) FROM (VALUES (CAST(` + cutover + ` AS datetime2(7))), (CAST(` + from + ` AS datetime2(7)))) AS v(at));
DECLARE @cand TABLE (
    item_type nvarchar(64) NOT NULL, item_id bigint NOT NULL, biller_id nvarchar(128) NOT NULL,
    created_at datetime2(7) NOT NULL, has_record bit NOT NULL,
    PRIMARY KEY (item_type, item_id)
);
DECLARE @claimed TABLE (
    item_type nvarchar(64) NOT NULL, item_id bigint NOT NULL, biller_id nvarchar(128) NOT NULL,
    version bigint NOT NULL, attempts int NOT NULL, source_created_at datetime2(3) NULL
);
INSERT INTO @cand (item_type, item_id, biller_id, created_at, has_record)
SELECT TOP (` + limit + `) u.item_type, u.item_id, u.biller_id, u.created_at, u.has_record
FROM (
` + strings.Join(parts, "\n    UNION ALL\n") + `
) AS u
ORDER BY u.created_at, u.item_type, u.item_id;
WITH n AS (
    SELECT TOP (` + limit + `) c.item_type, c.item_id, c.biller_id, c.status, c.version, c.attempts, c.owner, c.origin,
        c.source_created_at, c.fetched_at, c.updated_at, cand.created_at AS cand_created_at
    FROM ` + s.t.control + ` AS c WITH (ROWLOCK, UPDLOCK, READPAST, READCOMMITTEDLOCK, FORCESEEK)
    JOIN @cand AS cand ON cand.item_type = c.item_type AND cand.item_id = c.item_id
    WHERE cand.has_record = 1 AND c.status = N'New'
    ORDER BY c.item_type, c.item_id
)
UPDATE n
SET status = N'Fetched', version = version + 1, owner = ` + owner + `, origin = N'poll',
    source_created_at = COALESCE(source_created_at, cand_created_at), fetched_at = @now, updated_at = @now
OUTPUT inserted.item_type, inserted.item_id, inserted.biller_id, inserted.version, inserted.attempts, inserted.source_created_at
INTO @claimed (item_type, item_id, biller_id, version, attempts, source_created_at);
INSERT INTO ` + s.t.control + ` (item_type, item_id, biller_id, status, version, attempts, owner, origin,
    source_created_at, created_at, updated_at, fetched_at)
OUTPUT inserted.item_type, inserted.item_id, inserted.biller_id, inserted.version, inserted.attempts, inserted.source_created_at
INTO @claimed (item_type, item_id, biller_id, version, attempts, source_created_at)
SELECT cand.item_type, cand.item_id, cand.biller_id, N'Fetched', 1, 0, ` + owner + `, N'poll',
    cand.created_at, @now, @now, @now
FROM @cand AS cand
WHERE cand.has_record = 0
  AND NOT EXISTS (SELECT 1 FROM ` + s.t.control + ` AS c WITH (UPDLOCK, HOLDLOCK, FORCESEEK)
                  WHERE c.item_type = cand.item_type AND c.item_id = cand.item_id)
ORDER BY cand.item_type, cand.item_id;
SELECT n.candidates, r.item_type, r.item_id, r.biller_id, r.version, r.attempts, r.source_created_at
FROM (SELECT COUNT(*) AS candidates FROM @cand) AS n
LEFT JOIN (
    SELECT cl.item_type, cl.item_id, cl.biller_id, cl.version, cl.attempts, cl.source_created_at, cand.created_at AS cand_created_at
    FROM @claimed AS cl JOIN @cand AS cand ON cand.item_type = cl.item_type AND cand.item_id = cl.item_id
) AS r ON 1 = 1
ORDER BY r.cand_created_at, r.item_type, r.item_id;`
	return q, a
}

// maxClaimBatch caps one claim, and the items of one statement of
// ControlClaimBatch and ControlFinishBatch. SQL Server tries to escalate a
// statement's row locks to a table lock at about 5,000 locks on one index,
// and a claimed row costs a key lock in the clustered key and in each index
// it enters (plus a range lock while its absence is checked): a larger batch
// could lock the whole control table against every other claimer. The port
// promises up to Limit items; the caller claims again for more. The batch
// methods split a longer list into statements of this size.
const maxClaimBatch = 1000

// claimRounds bounds how often ControlClaimPending runs again when every
// candidate it saw was taken by a concurrent claimer in the meantime, or
// when it lost a deadlock or a duplicate-key race.
const claimRounds = 5

// ControlClaimPending claims up to Limit (at most 1000) pending items of one
// biller, oldest created first (ties: item type, then key), from the latest
// of its cut-over, its watermark and From, in one transaction (see
// claimPendingSQL): New records move to Fetched, items without a record get
// one as Fetched, and an item a concurrent claimer took is left out.
func (s *Store) ControlClaimPending(ctx context.Context, p store.ControlClaimPendingParams) ([]store.Claimed, error) {
	if p.Limit <= 0 || len(s.order) == 0 {
		return nil, nil
	}
	p.Limit = min(p.Limit, maxClaimBatch)
	q, args := s.claimPendingSQL(p)
	var lastErr error
	for range claimRounds {
		claimed, candidates, err := s.claimPendingOnce(ctx, q, args)
		if isDeadlock(err) || isDuplicateKey(err) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("claim pending of biller %s: %w", p.BillerID, err)
		}
		lastErr = nil
		if len(claimed) > 0 || candidates == 0 {
			return claimed, nil
		}
	}
	if lastErr != nil {
		return nil, fmt.Errorf("claim pending of biller %s: %w", p.BillerID, lastErr)
	}
	return nil, nil
}

func (s *Store) claimPendingOnce(ctx context.Context, q string, args []any) ([]store.Claimed, int64, error) {
	var (
		out        []store.Claimed
		candidates int64
	)
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				itemType, billerID sql.NullString
				itemID, version    sql.NullInt64
				attempts           sql.NullInt64
				created            sql.NullTime
			)
			if err := rows.Scan(&candidates, &itemType, &itemID, &billerID, &version, &attempts, &created); err != nil {
				return err
			}
			if !itemType.Valid {
				continue // nothing claimed: only the candidate count
			}
			out = append(out, store.Claimed{
				ItemKey:         store.ItemKey{ItemType: itemType.String, ItemID: itemID.Int64},
				BillerID:        billerID.String,
				Version:         version.Int64,
				Attempts:        int(attempts.Int64),
				SourceCreatedAt: utc(created),
			})
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, err
	}
	return out, candidates, nil
}

// pendingListSQL lists the oldest pending items of the billers created at
// least olderMS before the database clock, each biller and item type from
// its watermark or cut-over: per item type the oldest @limit
// in (biller, created-at) order, then the oldest @limit overall.
//
// Locking review: a read, as the scan of pendingCountSQL.
func (s *Store) pendingListSQL(billers string, olderMS int32, limit int64) (string, params) {
	var p params
	older := p.add(olderMS)
	cte := billersCTE(&p, billers)
	top := p.add(limit)
	parts := make([]string, 0, len(s.order))
	for i, src := range s.order {
		typ := p.add(src.ItemType)
		parts = append(parts, fmt.Sprintf(`    SELECT t%d.* FROM (
        SELECT TOP (%s) %s
        FROM b
        %s
        JOIN %s AS s %s
          ON s.%s = b.biller_id AND s.%s >= %s AND s.%s <= @before%s
        WHERE %s
        ORDER BY s.%s, s.%s
    ) AS t%d`,
			i, top, candidateColumns(src, typ),
			s.watermarkJoin(typ, "        "),
			src.table, sourceReadHints,
			src.biller, src.createdAt, scanFrom("b.cutover_at"), src.createdAt, src.typeFilter(&p, "s"),
			pendingCondition(src, s.t.control, typ),
			src.createdAt, src.key, i))
	}
	q := `SET NOCOUNT ON;
` + declareNow + `
DECLARE @before datetime2(3) = DATEADD(millisecond, -` + older + `, @now);
` + cte + `
SELECT TOP (` + top + `) u.item_type, u.item_id, u.biller_id, u.created_at
FROM (
` + strings.Join(parts, "\n    UNION ALL\n") + `
) AS u
ORDER BY u.created_at, u.item_type, u.item_id;`
	return q, p
}

// PendingList lists the oldest Limit pending items (no control record, or
// a New one) of the given billers, created at or after their watermark
// and cut-over and at least OlderThan before the database clock, oldest
// first (then item type, then id), in one query; a zero Limit means 100.
func (s *Store) PendingList(ctx context.Context, p store.PendingListParams) ([]store.SourceRow, error) {
	if len(p.Billers) == 0 || len(s.order) == 0 {
		return nil, nil
	}
	older, err := millis("older_than", p.OlderThan)
	if err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	billers, err := billersJSON(p.Billers)
	if err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	q, args := s.pendingListSQL(billers, older, limitOr(p.Limit, defaultLimit))
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	defer rows.Close()
	var out []store.SourceRow
	for rows.Next() {
		var r store.SourceRow
		var created time.Time
		if err := rows.Scan(&r.ItemType, &r.ItemID, &r.BillerID, &created); err != nil {
			return nil, fmt.Errorf("pending list: %w", err)
		}
		r.CreatedAt = created.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	return out, nil
}
