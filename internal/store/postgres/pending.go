package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/datapump/datapump/internal/store"
)

// pendingCondition is the anti-join that makes a source row pending: no
// control record, or a New one. itemTypeParam names the parameter holding
// the item type. OFFSET 0 keeps it a primary-key probe per source row: as
// a planned anti-join, statistics taken while the control table was small
// (a new shard, the first backlog after a cut-over) make the planner
// materialise or hash the control records and rescan them for every row.
func pendingCondition(src source, alias string, itemTypeParam int) string {
	return fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM datapump_control c WHERE c.item_type = $%d AND c.item_id = %s.%s AND c.status <> 'New' OFFSET 0)`,
		itemTypeParam, alias, src.key)
}

// pendingRecord is pendingCondition as a join, for a statement that also
// needs to know whether a pending row has a (New) record: a lateral probe
// of the key per source row (OFFSET 0, as above) exposing the record's
// status as r.status (NULL: no record), and the condition on it.
func pendingRecord(src source, alias string, itemTypeParam int) (join, cond string) {
	join = fmt.Sprintf(`LEFT JOIN LATERAL (SELECT c.status FROM datapump_control c WHERE c.item_type = $%d AND c.item_id = %s.%s OFFSET 0) r ON true`,
		itemTypeParam, alias, src.key)
	return join, `(r.status IS NULL OR r.status = 'New')`
}

// billerArrays splits billers into the arrays of ids and cut-overs the
// queries unnest, each biller once.
func billerArrays(in []store.BillerCutover) ([]string, []time.Time) {
	var (
		billers  []string
		cutovers []time.Time
		seen     = map[string]bool{}
	)
	for _, b := range in {
		if seen[b.BillerID] {
			continue
		}
		seen[b.BillerID] = true
		billers = append(billers, b.BillerID)
		cutovers = append(cutovers, b.CutoverAt)
	}
	return billers, cutovers
}

// watermarkJoin joins each biller of the CTE b to its watermark for the
// item type in parameter typeParam, unless the watermark was computed under
// a later cut-over than the biller's now or, with a positive fullParam,
// parameter fullParam is true (PendingCount's Full; PendingList has none).
func watermarkJoin(typeParam, fullParam int) string {
	join := fmt.Sprintf(`LEFT JOIN datapump_watermark w ON w.biller_id = b.biller_id AND w.item_type = $%d
				AND w.cutover_at <= b.cutover_at`, typeParam)
	if fullParam > 0 {
		join += fmt.Sprintf(` AND NOT $%d::boolean`, fullParam)
	}
	return join
}

// watermarkAdvance completes PendingCount's CTEs when it moves the
// watermarks ($3 full, $lagParam the lag in microseconds): each scanned (biller,
// item type) gets the earlier of its oldest pending created-at and the
// lag before now. A regular count updates a watermark only if nobody
// changed it since the count read it (its updated_at), so it cannot raise
// one that a concurrent full sweep just lowered to a late row; a full
// sweep writes unconditionally (what it computed holds on its own).
func watermarkAdvance(lagParam int) string {
	return fmt.Sprintf(`,
		computed AS (
			SELECT biller_id, item_type, cutover_at, read_updated_at,
				least(coalesce(oldest, 'infinity'), now() - $%d::bigint * interval '1 microsecond') AS low
			FROM per_type
		), moved AS (
			UPDATE datapump_watermark w
			SET cutover_at = computed.cutover_at, low_created_at = computed.low, updated_at = clock_timestamp()
			FROM computed
			WHERE w.biller_id = computed.biller_id AND w.item_type = computed.item_type
			  AND ($3::boolean OR w.updated_at = computed.read_updated_at)
		), added AS (
			INSERT INTO datapump_watermark (biller_id, item_type, cutover_at, low_created_at, updated_at)
			SELECT biller_id, item_type, cutover_at, low, clock_timestamp()
			FROM computed
			WHERE read_updated_at IS NULL
			ON CONFLICT (biller_id, item_type) DO NOTHING
		)`, lagParam)
}

// PendingCount counts pending items per biller and finds the oldest one's
// created-at, with one grouped query over every item type: billers and
// their cut-overs are passed as arrays, and each (biller, item type) reads
// its source rows' (biller, created-at) range from its watermark or cut-over.
// With a WatermarkLag the same statement moves the scanned watermarks.
// Billers without pending items are left out.
func (s *Store) PendingCount(ctx context.Context, p store.PendingCountParams) ([]store.BillerPending, error) {
	if len(p.Billers) == 0 || len(s.order) == 0 {
		return nil, nil
	}
	if p.WatermarkLag < 0 {
		return nil, fmt.Errorf("count pending: watermark_lag: %s must not be negative", p.WatermarkLag)
	}
	billers, cutovers := billerArrays(p.Billers)
	args := []any{billers, cutovers, p.Full}
	parts := make([]string, 0, len(s.order))
	for _, itemType := range s.order {
		src := s.sources[itemType]
		args = append(args, itemType)
		typeParam := len(args)
		filter := ""
		if src.typeColumn != "" {
			args = append(args, src.TypeValue)
			filter = src.typeFilter("s", len(args))
		}
		parts = append(parts, fmt.Sprintf(`
			SELECT b.biller_id, b.cutover_at, $%[1]d::text AS item_type, p.n, p.oldest,
				(SELECT r.updated_at FROM datapump_watermark r WHERE r.biller_id = b.biller_id AND r.item_type = $%[1]d) AS read_updated_at
			FROM b
			%[2]s
			CROSS JOIN LATERAL (
				SELECT count(*) AS n, min(s.%[3]s::timestamptz) AS oldest
				FROM %[4]s s
				WHERE s.%[5]s = b.biller_id AND s.%[3]s >= greatest(b.cutover_at, w.low_created_at)%[6]s AND %[7]s
			) p`,
			typeParam, watermarkJoin(typeParam, 3), src.createdAt, src.table, src.biller, filter, pendingCondition(src, "s", typeParam)))
	}
	advance := ""
	if p.WatermarkLag > 0 {
		args = append(args, micros(p.WatermarkLag))
		advance = watermarkAdvance(len(args))
	}
	q := `WITH b AS (SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS b(biller_id, cutover_at)),
		per_type AS (` + strings.Join(parts, " UNION ALL ") + `)` + advance + `
		SELECT biller_id, sum(n)::bigint, min(oldest) FROM per_type
		GROUP BY biller_id HAVING sum(n) > 0 ORDER BY biller_id`
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("count pending: %w", err)
	}
	defer rows.Close()
	var out []store.BillerPending
	for rows.Next() {
		var bp store.BillerPending
		var oldest *time.Time
		if err := rows.Scan(&bp.BillerID, &bp.Pending, &oldest); err != nil {
			return nil, fmt.Errorf("count pending: %w", err)
		}
		bp.OldestCreatedAt = utc(oldest)
		out = append(out, bp)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count pending: %w", err)
	}
	return out, nil
}

// pendingListLimit is PendingList's limit when none is given.
const pendingListLimit = 1000

// PendingList lists the oldest Limit pending items (no control record, or
// a New one) of the given billers, created at or after their watermark and
// cut-over and at least OlderThan before the database clock, oldest first
// (then item type, then key), in one query; a zero Limit means 1000. Each
// item type reads its oldest Limit rows from its (biller, created-at) range.
func (s *Store) PendingList(ctx context.Context, p store.PendingListParams) ([]store.SourceRow, error) {
	if len(p.Billers) == 0 || len(s.order) == 0 {
		return nil, nil
	}
	if p.OlderThan < 0 {
		return nil, fmt.Errorf("pending list: older_than: %s must not be negative", p.OlderThan)
	}
	n := p.Limit
	if n <= 0 {
		n = pendingListLimit
	}
	billers, cutovers := billerArrays(p.Billers)
	args := []any{billers, cutovers, micros(p.OlderThan), n}
	parts := make([]string, 0, len(s.order))
	for _, itemType := range s.order {
		src := s.sources[itemType]
		args = append(args, itemType)
		typeParam := len(args)
		filter := ""
		if src.typeColumn != "" {
			args = append(args, src.TypeValue)
			filter = src.typeFilter("s", len(args))
		}
		parts = append(parts, fmt.Sprintf(`(
			SELECT $%d::text AS item_type, s.%s::bigint AS item_id, s.%s::text AS biller_id, s.%s::timestamptz AS created_at
			FROM b
			%s
			JOIN %s s ON s.%s = b.biller_id AND s.%s >= greatest(b.cutover_at, w.low_created_at)
				AND s.%s <= now() - $3 * interval '1 microsecond'%s
			WHERE %s
			ORDER BY s.%s, s.%s
			LIMIT $4)`,
			typeParam, src.key, src.biller, src.createdAt,
			watermarkJoin(typeParam, 0),
			src.table, src.biller, src.createdAt, src.createdAt, filter,
			pendingCondition(src, "s", typeParam),
			src.createdAt, src.key))
	}
	q := `WITH b AS (SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS b(biller_id, cutover_at))
		SELECT item_type, item_id, biller_id, created_at FROM (` + strings.Join(parts, " UNION ALL ") + `) u
		ORDER BY created_at, item_type, item_id
		LIMIT $4`
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	defer rows.Close()
	var out []store.SourceRow
	for rows.Next() {
		var r store.SourceRow
		var created *time.Time
		if err := rows.Scan(&r.ItemType, &r.ItemID, &r.BillerID, &created); err != nil {
			return nil, fmt.Errorf("pending list: %w", err)
		}
		r.CreatedAt = utc(created)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending list: %w", err)
	}
	return out, nil
}

// claimRounds bounds how often ControlClaimPending tries again when every
// candidate it saw was taken by a concurrent claimer in the meantime.
const claimRounds = 5

// ControlClaimPending claims up to Limit pending items of one biller, oldest
// created first (ties: item type, then key), from the latest of its cut-over,
// its watermark and From, in one statement: it picks the
// candidates, moves New records to Fetched (locking them with SKIP LOCKED,
// so the update needs no second look at their status)
// and inserts Fetched records for the rest (ON CONFLICT DO NOTHING, in
// candidate order, so concurrent claimers wait on each other in one order
// and cannot deadlock). An item a concurrent claimer took is simply left out.
// The candidate scan reads each candidate's control record once and
// carries whether there is one (a New record: the others are not
// candidates); the statement's one snapshot shows the lock and the insert
// the same records, so only candidates with a record are looked up to be
// locked and only the others are inserted, rather than each candidate
// probing the key three times.
func (s *Store) ControlClaimPending(ctx context.Context, p store.ControlClaimPendingParams) ([]store.Claimed, error) {
	if p.Limit <= 0 || len(s.order) == 0 {
		return nil, nil
	}
	q, args := s.claimPendingQuery(p)
	for range claimRounds {
		claimed, candidates, err := s.claimPendingOnce(ctx, q, args)
		if err != nil {
			return nil, fmt.Errorf("claim pending of biller %s: %w", p.BillerID, err)
		}
		if len(claimed) > 0 || candidates == 0 {
			return claimed, nil
		}
	}
	return nil, nil
}

func (s *Store) claimPendingQuery(p store.ControlClaimPendingParams) (string, []any) {
	args := []any{p.BillerID, p.CutoverAt, p.Limit, p.Owner, nullTime(p.From)}
	parts := make([]string, 0, len(s.order))
	for _, itemType := range s.order {
		src := s.sources[itemType]
		args = append(args, itemType)
		typeParam := len(args)
		filter := ""
		if src.typeColumn != "" {
			args = append(args, src.TypeValue)
			filter = src.typeFilter("s", len(args))
		}
		join, pending := pendingRecord(src, "s", typeParam)
		parts = append(parts, fmt.Sprintf(`(
			SELECT $%[1]d::text AS item_type, s.%[2]s::bigint AS item_id, s.%[3]s::text AS biller_id, s.%[4]s::timestamptz AS created_at,
				r.status IS NOT NULL AS has_record
			FROM %[5]s s
			%[7]s
			WHERE s.%[3]s = $1 AND s.%[4]s >= greatest($2::timestamptz, $5::timestamptz,
				(SELECT w.low_created_at FROM datapump_watermark w WHERE w.biller_id = $1 AND w.item_type = $%[1]d AND w.cutover_at <= $2))%[6]s
			  AND %[8]s
			ORDER BY s.%[4]s, s.%[2]s
			LIMIT $3)`,
			typeParam, src.key, src.biller, src.createdAt, src.table, filter, join, pending))
	}
	q := `
		WITH cand AS (
			SELECT * FROM (` + strings.Join(parts, " UNION ALL ") + `) u
			ORDER BY created_at, item_type, item_id
			LIMIT $3
		), locked AS (
			SELECT c.item_type, c.item_id
			FROM (SELECT * FROM cand WHERE has_record ORDER BY item_type, item_id) k
			CROSS JOIN LATERAL (` + lockByKey("FOR UPDATE SKIP LOCKED") + `) c
			WHERE c.status = 'New'
		), upd AS (
			UPDATE datapump_control c
			SET status = 'Fetched', version = c.version + 1, owner = $4, origin = 'poll',
				source_created_at = coalesce(c.source_created_at, cand.created_at),
				fetched_at = now(), updated_at = now()
			FROM locked JOIN cand ON cand.item_type = locked.item_type AND cand.item_id = locked.item_id
			WHERE c.item_type = locked.item_type AND c.item_id = locked.item_id
			RETURNING c.item_type, c.item_id, c.biller_id, c.version, c.attempts, c.source_created_at, cand.created_at AS cand_created_at
		), ins AS (
			INSERT INTO datapump_control (item_type, item_id, biller_id, status, version, attempts, owner, origin,
				source_created_at, created_at, updated_at, fetched_at)
			SELECT cand.item_type, cand.item_id, cand.biller_id, 'Fetched', 1, 0, $4, 'poll',
				cand.created_at, now(), now(), now()
			FROM cand
			WHERE NOT cand.has_record
			ORDER BY cand.created_at, cand.item_type, cand.item_id
			ON CONFLICT (item_type, item_id) DO NOTHING
			RETURNING item_type, item_id, biller_id, version, attempts, source_created_at, source_created_at AS cand_created_at
		), claimed AS (
			SELECT * FROM upd UNION ALL SELECT * FROM ins
		)
		SELECT n.candidates, r.item_type, r.item_id, r.biller_id, r.version, r.attempts, r.source_created_at
		FROM (SELECT count(*) AS candidates FROM cand) n
		LEFT JOIN claimed r ON true
		ORDER BY r.cand_created_at, r.item_type, r.item_id`
	return q, args
}

func (s *Store) claimPendingOnce(ctx context.Context, q string, args []any) ([]store.Claimed, int64, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var (
		out        []store.Claimed
		candidates int64
	)
	for rows.Next() {
		var (
			itemType, billerID *string
			itemID, version    *int64
			attempts           *int
			created            *time.Time
		)
		if err := rows.Scan(&candidates, &itemType, &itemID, &billerID, &version, &attempts, &created); err != nil {
			return nil, 0, err
		}
		if itemType == nil {
			continue // no row claimed: only the candidate count
		}
		out = append(out, store.Claimed{
			ItemKey:         store.ItemKey{ItemType: *itemType, ItemID: *itemID},
			BillerID:        *billerID,
			Version:         *version,
			Attempts:        *attempts,
			SourceCreatedAt: utc(created),
		})
	}
	return out, candidates, rows.Err()
}
