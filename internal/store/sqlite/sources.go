package sqlite

import (
	"database/sql"
	"fmt"
	"strings"

	"github.com/datapump/datapump/internal/store"
)

// source is one item type's mapping with its SQL built once at Open. Every
// identifier in it passed store.Source.Validate and is quoted; every value
// is a named parameter.
type source struct {
	src store.Source
	// n numbers the source's own parameters (:type<n>, :tv<n>).
	n int
	// table, key, biller, created and typeCol are quoted identifiers.
	table, key, biller, created, typeCol string
	// enrich is the enrichment query with its :id bound to ?1.
	enrich string
	// row reads a source row's biller and created-at by key.
	row string
}

// quoteIdent quotes a validated identifier, part by part ("schema"."table").
func quoteIdent(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + p + `"`
	}
	return strings.Join(parts, ".")
}

func compileSource(src store.Source, n int) *source {
	c := &source{
		src: src, n: n,
		table: quoteIdent(src.Table), key: quoteIdent(src.KeyColumn),
		biller: quoteIdent(src.BillerColumn), created: quoteIdent(src.CreatedAtColumn),
		enrich: store.BindEnrichQuery(src.EnrichQuery, "?1"),
	}
	if src.TypeColumn != "" {
		c.typeCol = quoteIdent(src.TypeColumn)
	}
	c.row = fmt.Sprintf(`SELECT s.%s, s.%s FROM %s s WHERE s.%s = :id%s`, c.biller, c.created, c.table, c.key, c.typeFilter())
	return c
}

// typeFilter restricts a shared table to this item type's rows (alias s).
func (c *source) typeFilter() string {
	if c.typeCol == "" {
		return ""
	}
	return fmt.Sprintf(` AND s.%s = :tv%d`, c.typeCol, c.n)
}

// args are the source's own named parameters.
func (c *source) args() []any {
	out := []any{sql.Named(fmt.Sprintf("type%d", c.n), c.src.ItemType)}
	if c.typeCol != "" {
		out = append(out, sql.Named(fmt.Sprintf("tv%d", c.n), c.src.TypeValue))
	}
	return out
}

// unclaimed is the anti-join that keeps an item pending: no control record,
// or one in status New.
func (c *source) unclaimed() string {
	return fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM datapump_control c WHERE c.item_type = :type%d AND c.item_id = s.%s AND c.status <> 'New')`, c.n, c.key)
}

// watermarkJoin joins each biller of the CTE "billers" to its watermark w
// for this item type, unless the watermark was computed under a later
// cut-over than the biller's now or, with unlessFull, :full is set
// (PendingCount's Full; PendingList has none).
func (c *source) watermarkJoin(unlessFull bool) string {
	join := fmt.Sprintf(`LEFT JOIN datapump_watermark w ON w.biller_id = b.biller_id AND w.item_type = :type%d AND w.cutover_at <= b.cutover`, c.n)
	if unlessFull {
		join += ` AND NOT :full`
	}
	return join
}

// scanFrom is where the scan of a biller of the CTE "billers" starts: its
// cut-over, or its watermark w (see watermarkJoin) when that is later. It
// is a value of the outer rows, so the scan stays a range on the
// (biller, created_at) index.
const scanFrom = `max(b.cutover, COALESCE(w.low_created_at, ''))`

// pendingBranch counts the pending rows of each biller of the CTE
// "billers" (biller_id, cutover) from its watermark or cut-over and finds
// the oldest, as (biller_id, item_type, cutover, pending, oldest). A biller
// without pending rows has a row too (pending 0, oldest NULL), so that its
// watermark can move.
func (c *source) pendingBranch() string {
	return fmt.Sprintf(`SELECT b.biller_id, :type%[1]d AS item_type, b.cutover, COUNT(s.%[4]s) AS pending, MIN(s.%[4]s) AS oldest FROM billers b %[5]s LEFT JOIN %[2]s s ON s.%[3]s = b.biller_id AND s.%[4]s >= %[6]s AND %[7]s%[8]s GROUP BY b.biller_id`,
		c.n, c.table, c.biller, c.created, c.watermarkJoin(true), scanFrom, c.unclaimed(), c.typeFilter())
}

// listBranch selects the oldest :limit pending rows of the billers in the
// CTE "billers", from their watermark or cut-over, created at or before
// the CTE "grace" (before), as (item_type, item_id, biller_id, created_at).
func (c *source) listBranch() string {
	return fmt.Sprintf(`SELECT * FROM (SELECT :type%[1]d AS item_type, s.%[2]s AS item_id, s.%[3]s AS biller_id, s.%[4]s AS created_at FROM billers b %[8]s JOIN %[5]s s ON s.%[3]s = b.biller_id AND s.%[4]s >= %[9]s AND s.%[4]s <= (SELECT before FROM grace) WHERE %[6]s%[7]s ORDER BY s.%[4]s, s.%[2]s LIMIT :limit)`,
		c.n, c.key, c.biller, c.created, c.table, c.unclaimed(), c.typeFilter(), c.watermarkJoin(false), scanFrom)
}

// claimBranch selects the oldest :limit pending rows of :biller from the
// latest of :cutover, :from and the item type's watermark (when it was
// computed under :cutover or an earlier one), as (item_type, item_id,
// created_at).
func (c *source) claimBranch() string {
	return fmt.Sprintf(`SELECT * FROM (SELECT :type%[1]d AS item_type, s.%[2]s AS item_id, s.%[3]s AS created_at FROM %[4]s s WHERE s.%[5]s = :biller AND s.%[3]s >= max(:cutover, :from, COALESCE((SELECT w.low_created_at FROM datapump_watermark w WHERE w.biller_id = :biller AND w.item_type = :type%[1]d AND w.cutover_at <= :cutover), '')) AND %[6]s%[7]s ORDER BY s.%[3]s, s.%[2]s LIMIT :limit)`,
		c.n, c.key, c.created, c.table, c.biller, c.unclaimed(), c.typeFilter())
}

// sourceSet is the item types of one store and the grouped queries over
// all of them.
type sourceSet struct {
	byType map[string]*source
	order  []*source
	// pendingCount counts pending items per biller and item type for
	// :billers, a JSON array of [biller_id, cutover] pairs, from their
	// watermarks (unless :full) or cut-overs, and finds the oldest, in one
	// query.
	pendingCount string
	// pendingList lists the oldest :limit pending items of :billers created
	// :older_than milliseconds or more before the database clock, from
	// their watermarks or cut-overs.
	pendingList string
	// claimPending inserts or moves to Fetched the oldest :limit pending
	// items of :biller from the latest of :cutover, :from and its
	// watermarks, and returns them.
	claimPending string
	// args are every source's own parameters.
	args []any
}

func newSourceSet(srcs []store.Source) *sourceSet {
	set := &sourceSet{byType: map[string]*source{}}
	var pending, list, claim []string
	for i, src := range srcs {
		c := compileSource(src, i)
		set.byType[src.ItemType] = c
		set.order = append(set.order, c)
		set.args = append(set.args, c.args()...)
		pending = append(pending, c.pendingBranch())
		list = append(list, c.listBranch())
		claim = append(claim, c.claimBranch())
	}
	if len(srcs) == 0 {
		return set
	}
	set.pendingCount = fmt.Sprintf(pendingCountSQL, strings.Join(pending, "\n    UNION ALL\n    "))
	set.pendingList = fmt.Sprintf(pendingListSQL, nowMS, strings.Join(list, "\n    UNION ALL\n    "))
	set.claimPending = fmt.Sprintf(claimPendingSQL, nowMS, strings.Join(claim, "\n        UNION ALL\n        "))
	return set
}

// pendingCountSQL is completed with the UNION ALL of every source's
// pendingBranch: one row per biller and item type.
const pendingCountSQL = `WITH billers (biller_id, cutover) AS (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:billers)
)
SELECT biller_id, item_type, cutover, pending, oldest FROM (
    %s
) ORDER BY biller_id, item_type`

// pendingListSQL is completed with nowMS and the UNION ALL of every
// source's listBranch. The grace cut-off is formatted as source created-at
// values are (sourceTimeLayout), from whole milliseconds, so the comparison
// stays a text range on the (biller, created_at) index.
const pendingListSQL = `WITH billers (biller_id, cutover) AS (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:billers)
), cutoff (ms) AS (
    SELECT MAX(%s - :older_than, 0)
), grace (before) AS (
    SELECT strftime('%%Y-%%m-%%d %%H:%%M:%%S', ms / 1000, 'unixepoch') || printf('.%%03d', ms %% 1000) FROM cutoff
)
SELECT item_type, item_id, biller_id, created_at FROM (
    %s
) ORDER BY created_at, item_type, item_id LIMIT :limit`

// claimPendingSQL is completed with nowMS and the UNION ALL of every
// source's claimBranch. It runs in a BEGIN IMMEDIATE transaction; items
// without a record get one as Fetched, New records move to Fetched.
const claimPendingSQL = `INSERT INTO datapump_control (
    item_type, item_id, biller_id, status, version, attempts, owner, origin,
    source_created_at, created_at, updated_at, fetched_at)
SELECT p.item_type, p.item_id, :biller, 'Fetched', 1, 0, :owner, 'poll',
    CAST(ROUND(unixepoch(p.created_at, 'subsec') * 1000) AS INTEGER), n.now, n.now, n.now
FROM (SELECT %s AS now) n, (
        %s
        ORDER BY created_at, item_type, item_id LIMIT :limit
    ) p
WHERE true
ON CONFLICT (item_type, item_id) DO UPDATE SET
    status = 'Fetched', version = version + 1, owner = excluded.owner,
    biller_id = excluded.biller_id, source_created_at = excluded.source_created_at,
    updated_at = excluded.updated_at, fetched_at = excluded.fetched_at
WHERE datapump_control.status = 'New'
RETURNING item_type, item_id, biller_id, version, attempts, source_created_at`
