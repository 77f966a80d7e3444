package sqlserver

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlrows"
)

// compareKeys orders item keys by type, then id: the order the batches
// send their JSON in.
func compareKeys(aType string, aID int64, bType string, bID int64) int {
	return cmp.Or(cmp.Compare(aType, bType), cmp.Compare(aID, bID))
}

// claimKey is one item of a batch claim in the JSON array OPENJSON reads:
// its key, its position in the batch, its owner and its lease.
type claimKey struct {
	T string `json:"t"`
	I int64  `json:"i"`
	O int    `json:"o"`
	W string `json:"w"`
	L int32  `json:"l"`
}

// claimBatchSQL claims the items of j, a JSON array of claimKey with each
// key once, in one transaction, and returns for each item whose record
// exists the record as it stands and whether this batch acquired it:
//
//  1. The items go into @k, keyed by item key.
//  2. Every listed record is read WITH (ROWLOCK, UPDLOCK, FORCESEEK) into
//     @seen: the U locks hold each record as read until commit.
//  3. One UPDATE moves the claimable ones among them to Processing for
//     their owner and lease (claimable, claimSet: the conditions and the SET
//     list of claimItemSQL), OUTPUT … INTO @out.
//  4. After the commit: the acquired records from @out, the others from
//     @seen, at @now.
//
// Locking review: @k drives both passes over datapump_control as seeks on
// its clustered key (FORCESEEK: a scan under UPDLOCK would lock the whole
// history) in @k's primary-key order, which is datapump_control's, so two
// overlapping batches — and the key-ordered mark-queued and finish
// batches — lock shared records in one order and cannot deadlock each
// other. Step 2 locks every listed record, claimable or not, before step 3
// changes any: step 3 then only converts locks this transaction already
// holds (U to X) and waits for nobody, and what step 4 reports for a
// record not taken is what step 3 saw, so it is never a record that
// changed in between. No READPAST: like the one-item claim, a record
// another claimer or a finisher holds is waited for and then judged as it
// committed (skipping it would report it absent). An absent record locks
// nothing (no HOLDLOCK): inserting one is left to ControlClaimItem, whose
// insert checks the key range WITH (UPDLOCK, HOLDLOCK). The locks last
// until COMMIT and step 4 reads only table variables, so a deadlock victim
// (1205) has changed nothing and the batch runs again whole; XACT_ABORT
// (also set by sessionInit) rolls the transaction back on any error or a
// client's cancel. A batch locks one clustered key per item plus the keys
// its UPDATE moves in the secondary indexes, under the 5,000 locks per
// index at which SQL Server escalates to a table lock as long as it holds
// at most maxClaimBatch items.
func (s *Store) claimBatchSQL(j string) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
SET XACT_ABORT ON;
` + declareNow + `
DECLARE @k TABLE (
    item_type nvarchar(64) NOT NULL, item_id bigint NOT NULL, ord int NOT NULL,
    owner nvarchar(256) NOT NULL, lease_ms int NOT NULL,
    PRIMARY KEY (item_type, item_id)
);
DECLARE @seen TABLE (ord int NOT NULL PRIMARY KEY, ` + controlTableVar + `);
DECLARE @out TABLE (ord int NOT NULL PRIMARY KEY, ` + controlTableVar + `);
INSERT INTO @k (item_type, item_id, ord, owner, lease_ms)
SELECT j.item_type, j.item_id, j.ord, j.owner, j.lease_ms
FROM OPENJSON(` + p.add(j) + `) WITH (item_type nvarchar(64) '$.t', item_id bigint '$.i', ord int '$.o',
    owner nvarchar(256) '$.w', lease_ms int '$.l') AS j;
BEGIN TRANSACTION;
INSERT INTO @seen (ord, ` + controlColumns + `)
SELECT k.ord, ` + prefixed("c") + `
FROM @k AS k
JOIN ` + s.t.control + ` AS c WITH (ROWLOCK, UPDLOCK, FORCESEEK) ON c.item_type = k.item_type AND c.item_id = k.item_id
ORDER BY k.item_type, k.item_id;
UPDATE c
` + claimSet("c.", "k.owner", "k.lease_ms") + `
OUTPUT k.ord, ` + prefixed("inserted") + `
INTO @out (ord, ` + controlColumns + `)
FROM @k AS k
JOIN ` + s.t.control + ` AS c WITH (ROWLOCK, FORCESEEK) ON c.item_type = k.item_type AND c.item_id = k.item_id
WHERE ` + claimable("c.") + `;
COMMIT TRANSACTION;
SELECT o.ord, CAST(1 AS bit) AS acquired, @now AS now, ` + prefixed("o") + ` FROM @out AS o
UNION ALL
SELECT s.ord, CAST(0 AS bit), @now, ` + prefixed("s") + ` FROM @seen AS s
WHERE NOT EXISTS (SELECT 1 FROM @out AS o WHERE o.ord = s.ord);`
	return q, p
}

// claimedRow is one row of claimBatchSQL's result.
type claimedRow struct {
	ord      int
	acquired bool
	now      time.Time
	control  store.Control
}

// ControlClaimBatch claims several items for processing, each exactly as
// ControlClaimItem would, with one batch (claimBatchSQL) per up to
// maxClaimBatch distinct items. An unknown item type or a bad lease is the
// item's Err without a statement. The items the batch cannot settle go
// through ControlClaimItem afterwards, in order: an item without a record
// that is to be inserted (InsertIfAbsent), each later mention of an item
// named twice, which thus finds its first mention's claim, and a record
// classifyClaim cannot place. When a batch fails after an earlier one
// committed, its items and the later ones get its error as their Err, so
// that the claims made are still reported; when the first fails, the call
// does.
func (s *Store) ControlClaimBatch(ctx context.Context, ps []store.ControlClaimItemParams) ([]store.ItemClaimResult, error) {
	out := make([]store.ItemClaimResult, len(ps))
	settled := make([]bool, len(ps))
	var keys []claimKey
	named := map[store.ItemKey]bool{}
	for i, p := range ps {
		_, leaseMS, err := s.claimCheck(p)
		if err != nil {
			out[i].Err, settled[i] = err, true
			continue
		}
		if named[p.Key] {
			continue
		}
		named[p.Key] = true
		keys = append(keys, claimKey{T: p.Key.ItemType, I: p.Key.ItemID, O: i, W: p.Owner, L: leaseMS})
	}
	slices.SortFunc(keys, func(a, b claimKey) int { return compareKeys(a.T, a.I, b.T, b.I) })
	for start := 0; start < len(keys); start += maxClaimBatch {
		chunk := keys[start:min(start+maxClaimBatch, len(keys))]
		rows, err := s.claimBatchOnce(ctx, chunk)
		if err != nil && start == 0 {
			return nil, fmt.Errorf("claim items: %w", err)
		}
		if err != nil {
			for _, k := range keys[start:] {
				out[k.O].Err, settled[k.O] = fmt.Errorf("claim items: %w", err), true
			}
			break
		}
		found := make(map[int]bool, len(rows))
		for _, r := range rows {
			found[r.ord] = true
			if r.acquired {
				out[r.ord].ItemClaim, settled[r.ord] = store.ItemClaim{Outcome: store.ClaimAcquired, Control: r.control}, true
				continue
			}
			out[r.ord].ItemClaim, settled[r.ord] = classifyClaim(r.control, r.now)
		}
		for _, k := range chunk {
			if !found[k.O] && !ps[k.O].InsertIfAbsent {
				out[k.O].ItemClaim, settled[k.O] = store.ItemClaim{Outcome: store.ClaimAbsent}, true
			}
		}
	}
	for i, p := range ps {
		if !settled[i] {
			out[i].ItemClaim, out[i].Err = s.ControlClaimItem(ctx, p)
		}
	}
	return out, nil
}

// claimBatchOnce runs claimBatchSQL for chunk, again if it is chosen as a
// deadlock victim.
func (s *Store) claimBatchOnce(ctx context.Context, chunk []claimKey) ([]claimedRow, error) {
	j, err := json.Marshal(chunk)
	if err != nil {
		return nil, err
	}
	q, args := s.claimBatchSQL(string(j))
	var out []claimedRow
	err = s.retryDeadlock(ctx, func() error {
		out = out[:0]
		rows, err := s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r claimedRow
			targets, done := controlTargets(&r.control)
			if err := rows.Scan(append([]any{&r.ord, &r.acquired, &r.now}, targets...)...); err != nil {
				return err
			}
			done()
			out = append(out, r)
		}
		return rows.Err()
	})
	return out, err
}

// finishKey is one claim of a batch finish in the JSON array OPENJSON
// reads: its key and version, its position in the batch, the status it
// ends in and its error (absent, so NULL, to keep the last one).
type finishKey struct {
	T string `json:"t"`
	I int64  `json:"i"`
	V int64  `json:"v"`
	O int    `json:"o"`
	S string `json:"s"`
	E string `json:"e,omitempty"`
}

// finishBatchSQL ends the held claims of j, a JSON array of finishKey with
// each key and version once, in one UPDATE with finishSQL's fencing (the
// version read, still Processing) and SET list (finishSet), and returns
// the positions of the claims it ended. A key named with two versions
// joins its record twice, but only the row of the record's version can
// meet the fence, so each record is changed once.
//
// Locking review: @f, keyed by item key and version, drives the UPDATE as
// seeks on datapump_control's clustered key (FORCESEEK) in that key order,
// as the batch claim and mark-queued do, so overlapping batches cannot
// deadlock; the UPDATE's U lock on each record is converted to X where the
// fence holds and released where it does not. One statement commits on its
// own, so a deadlock victim has changed nothing and is run again.
func (s *Store) finishBatchSQL(j string) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
` + declareNow + `
DECLARE @f TABLE (
    item_type nvarchar(64) NOT NULL, item_id bigint NOT NULL, version bigint NOT NULL, ord int NOT NULL,
    status nvarchar(16) NOT NULL, last_error nvarchar(max) NULL,
    PRIMARY KEY (item_type, item_id, version)
);
DECLARE @done TABLE (ord int NOT NULL PRIMARY KEY);
INSERT INTO @f (item_type, item_id, version, ord, status, last_error)
SELECT j.item_type, j.item_id, j.version, j.ord, j.status, j.last_error
FROM OPENJSON(` + p.add(j) + `) WITH (item_type nvarchar(64) '$.t', item_id bigint '$.i', version bigint '$.v', ord int '$.o',
    status nvarchar(16) '$.s', last_error nvarchar(max) '$.e') AS j;
UPDATE c
` + finishSet("c.", "f.status", "f.last_error") + `
OUTPUT f.ord
INTO @done (ord)
FROM @f AS f
JOIN ` + s.t.control + ` AS c WITH (ROWLOCK, FORCESEEK) ON c.item_type = f.item_type AND c.item_id = f.item_id
WHERE c.version = f.version AND c.status = N'Processing';
SELECT ord FROM @done;`
	return q, p
}

// ControlFinishBatch ends several Processing claims, each exactly as
// ControlFinish would, with one statement (finishBatchSQL) per up to
// maxClaimBatch claims, after checking every status. A claim named twice
// (same key and version) is ended by its first mention; the later one is
// false, as a second ControlFinish would be. A failed statement fails the
// call; the statements before it stay committed (finishing again is false,
// as for ControlFinish).
func (s *Store) ControlFinishBatch(ctx context.Context, ps []store.ControlFinishParams) ([]bool, error) {
	for _, p := range ps {
		if err := p.Validate(); err != nil {
			return nil, err
		}
	}
	ok := make([]bool, len(ps))
	var claims []finishKey
	named := map[store.Fenced]bool{}
	for i, p := range ps {
		if named[p.Fenced] {
			continue
		}
		named[p.Fenced] = true
		claims = append(claims, finishKey{T: p.ItemType, I: p.ItemID, V: p.Version, O: i, S: string(p.Status), E: p.Error})
	}
	slices.SortFunc(claims, func(a, b finishKey) int {
		return cmp.Or(compareKeys(a.T, a.I, b.T, b.I), cmp.Compare(a.V, b.V))
	})
	for chunk := range slices.Chunk(claims, maxClaimBatch) {
		j, err := json.Marshal(chunk)
		if err != nil {
			return nil, fmt.Errorf("finish items: %w", err)
		}
		q, args := s.finishBatchSQL(string(j))
		var ended []int
		err = s.retryDeadlock(ctx, func() error {
			ended = ended[:0]
			rows, err := s.db.QueryContext(ctx, q, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var o int
				if err := rows.Scan(&o); err != nil {
					return err
				}
				ended = append(ended, o)
			}
			return rows.Err()
		})
		if err != nil {
			return nil, fmt.Errorf("finish items: %w", err)
		}
		for _, o := range ended {
			ok[o] = true
		}
	}
	return ok, nil
}

// enrichMarker names the one-column result set enrichBatchSQL sends
// before each item's enrichment query: the item's position in the batch.
// It tells the items' result sets apart whatever their queries return.
const enrichMarker = "datapump_enrich_item"

// enrichItem is one item of a batch enrichment in the JSON array OPENJSON
// reads: its position in the batch, its key and which of the batch's
// queries enriches it.
type enrichItem struct {
	O int   `json:"o"`
	I int64 `json:"i"`
	Q int   `json:"q"`
}

// enrichBatchSQL runs, for each item of items (a JSON array of
// enrichItem), in order, a marker result set (enrichMarker) with its
// position and then its query — one of queries, a JSON array of the
// sources' enrichment queries — through sp_executesql with the item's key
// as @p1: the same statement, with the same parameter, that ItemEnrich
// sends, in its own scope, so a query's own variables, CTEs or trailing
// semicolon cannot disturb the next one's. The batch's text does not
// depend on the items, so one plan serves every batch.
//
// Locking review: each query runs as written with the session's READ
// COMMITTED, on its own, as ItemEnrich runs it; the batch opens no
// transaction and takes no locks of its own (the loop reads a table
// variable).
func enrichBatchSQL(items, queries string) (string, params) {
	var p params
	q := `SET NOCOUNT ON;
DECLARE @items TABLE (ord int NOT NULL PRIMARY KEY, item_id bigint NOT NULL, query nvarchar(max) NOT NULL);
INSERT INTO @items (ord, item_id, query)
SELECT i.ord, i.item_id, q.[value]
FROM OPENJSON(` + p.add(items) + `) WITH (ord int '$.o', item_id bigint '$.i', q int '$.q') AS i
JOIN OPENJSON(` + p.add(queries) + `) AS q ON CAST(q.[key] AS int) = i.q;
DECLARE @ord int = -1, @id bigint, @query nvarchar(max);
WHILE 1 = 1
BEGIN
    SELECT TOP (1) @ord = ord, @id = item_id, @query = query FROM @items WHERE ord > @ord ORDER BY ord;
    IF @@ROWCOUNT = 0 BREAK;
    SELECT @ord AS ` + enrichMarker + `;
    EXEC sp_executesql @query, N'@p1 bigint', @id;
END;`
	return q, p
}

// ItemEnrichBatch enriches several items in one round trip
// (enrichBatchSQL), reading each item's first result set's first row as
// ItemEnrich does. An item the batch leaves without an answer — its query
// failed, returned no result set, or the batch broke off before it — goes
// through ItemEnrich afterwards, so each result is what ItemEnrich
// returns; an unknown item type is the item's Err without a statement.
func (s *Store) ItemEnrichBatch(ctx context.Context, keys []store.ItemKey) ([]store.EnrichResult, error) {
	out := make([]store.EnrichResult, len(keys))
	answered := make([]bool, len(keys))
	var (
		items   []enrichItem
		queries []string
		query   = map[*source]int{}
	)
	for i, key := range keys {
		src, err := s.source(key.ItemType)
		if err != nil {
			out[i].Err, answered[i] = fmt.Errorf("enrich %s: %w", key, err), true
			continue
		}
		n, ok := query[src]
		if !ok {
			n = len(queries)
			query[src] = n
			queries = append(queries, src.enrich)
		}
		items = append(items, enrichItem{O: i, I: key.ItemID, Q: n})
	}
	if len(items) == 0 {
		return out, nil
	}
	itemsJSON, err := json.Marshal(items)
	if err != nil {
		return nil, fmt.Errorf("enrich items: %w", err)
	}
	queriesJSON, err := json.Marshal(queries)
	if err != nil {
		return nil, fmt.Errorf("enrich items: %w", err)
	}
	q, args := enrichBatchSQL(string(itemsJSON), string(queriesJSON))
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("enrich items: %w", err)
	}
	readEnrichBatch(rows, keys, out, answered)
	for i, key := range keys {
		if !answered[i] {
			out[i].Row, out[i].Err = s.ItemEnrich(ctx, key)
		}
	}
	return out, nil
}

// readEnrichBatch reads enrichBatchSQL's result sets into out, marking the
// items it answered, and closes rows. It stops at the first error, which
// leaves the item whose query was running, and the ones after it,
// unanswered.
func readEnrichBatch(rows *sql.Rows, keys []store.ItemKey, out []store.EnrichResult, answered []bool) {
	defer rows.Close()
	current := -1 // the item whose query's result sets follow
	for {
		cols, err := rows.Columns()
		if err != nil {
			return
		}
		switch {
		case len(cols) == 1 && cols[0] == enrichMarker:
			current = -1
			if rows.Next() && rows.Scan(&current) != nil {
				return
			}
		case current >= 0 && !answered[current]:
			row, found, err := sqlrows.FirstRow(rows, plainColumnValue)
			if err != nil {
				return
			}
			out[current].Row, out[current].Err = enriched(keys[current], row, found)
			answered[current] = true
		}
		// Past the rest of the result set, unused as ItemEnrich leaves it
		// (so is a further result set of the same query), to the next.
		for rows.Next() {
		}
		if rows.Err() != nil || !rows.NextResultSet() {
			return
		}
	}
}
