package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/storetest"
)

// TestQueryPlansKeepOffTheHistory: on a control table that is nearly all
// history, with a nearly empty backlog (when a partial index looks cheapest
// to scan, and a prepared statement's generic plan may be made and cached),
// the backlog count reads only the partial index of the records that are
// not Processed, and every lookup by key probes the primary key.
func TestQueryPlansKeepOffTheHistory(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	s := openFresh(t, storetest.Sources())
	for _, q := range []string{
		`INSERT INTO datapump_control (item_type, item_id, biller_id, status, processed_at)
			SELECT 'payment', i, 'b' || (i % 20), 'Processed', now() FROM generate_series(1, 100000) i`,
		`INSERT INTO datapump_control (item_type, item_id, biller_id, status, lease_until)
			VALUES ('paperless', 1, 'b1', 'Queued', NULL), ('paperless', 2, 'b2', 'Processing', now() + interval '1 hour')`,
		`ANALYZE datapump_control`,
	} {
		_, err := s.pool.Exec(ctx, q)
		require.NoError(t, err)
	}
	scans := genericScans(t, s)
	count := scans("count_open", countByStatusSQL(false), "'{"+strings.Join(statusOrder(), ",")+"}'")
	require.Contains(t, strings.Join(count, " "), "Scan/datapump_control_open_biller_status_idx", "the backlog count reads the open records' index")
	for _, scan := range count {
		// A bitmap heap scan reads the rows the open records' index found.
		require.True(t, strings.HasSuffix(scan, "/datapump_control_open_biller_status_idx") || scan == "Bitmap Heap Scan/",
			"the backlog count reads the history: %v", count)
	}

	for _, st := range []struct{ name, sql, args string }{
		{"claim_item", claimExistingSQL, "'paperless', 1, 'w', 1000"},
		{"extend_lease", extendLeaseSQL, "'paperless', 2, 1, 1000"},
		{"finish", finishSQL, "'paperless', 2, 1, 'Processed', ''"},
		{"release", releaseSQL, "'paperless', 2, 1, 1000, 'x'"},
		{"skip", skipSQL, "'paperless', 1, 'x'"},
	} {
		for _, scan := range scans(st.name, st.sql, st.args) {
			require.Equal(t, "Index Scan/datapump_control_pkey", scan, "%s probes the primary key", st.name)
		}
	}
	requireBatchPlansByKeyAndTuple(t, scans)

	got, err := s.ControlCountByStatus(ctx, store.ControlCountParams{})
	require.NoError(t, err)
	require.Equal(t, []store.StatusCount{{BillerID: "b1", Status: store.StatusQueued, Count: 1}, {BillerID: "b2", Status: store.StatusProcessing, Count: 1}}, got)
}

// batchStatements are the batch status updates' statements, with
// arguments naming the Queued record of TestQueryPlansKeepOffTheHistory.
var batchStatements = []struct{ name, sql, args string }{
	{"mark_queued", markQueuedSQL, "'{paperless}', '{1}', '{1}'"},
	{"mark_queued_locked", markQueuedLockedSQL, "'{paperless}', '{1}', '{1}'"},
	{"claim_batch", claimBatchSQL, "'{paperless}', '{1}', '{w}', '{1000}'"},
	{"finish_batch", finishBatchSQL, "'{paperless}', '{2}', '{1}', '{Processed}', '{\"\"}'"},
	{"finish_batch_locked", finishBatchLockedSQL, "'{paperless}', '{2}', '{1}', '{Processed}', '{\"\"}'"},
}

// requireBatchPlansByKeyAndTuple: every read of the control table in the
// batch statements' generic plans probes the primary key or fetches a
// tuple the statement found (a TID scan), never a scan of the table or of
// a status index.
func requireBatchPlansByKeyAndTuple(t *testing.T, scans func(name, q, args string) []string) {
	t.Helper()
	for _, st := range batchStatements {
		got := scans(st.name, st.sql, st.args)
		for _, scan := range got {
			require.True(t, scan == "Index Scan/datapump_control_pkey" || scan == "Tid Scan/",
				"%s reads the control table other than by key or by tuple: %v", st.name, got)
		}
		if !strings.HasSuffix(st.name, "_locked") {
			require.Contains(t, got, "Tid Scan/", "%s updates the tuples it found", st.name)
		}
	}
}

// TestBatchPlansOnAnEmptyTable: made while the control table is empty (a
// new shard, when a prepared statement's generic plan may be made and
// cached), the batch statements' plans still reach each record by key or
// by tuple, so they stay cheap as the table grows.
func TestBatchPlansOnAnEmptyTable(t *testing.T) {
	testDSN(t)
	t.Parallel()
	requireBatchPlansByKeyAndTuple(t, genericScans(t, openFresh(t, storetest.Sources())))
}

// genericScans returns a function that prepares a statement on one of
// s's connections and returns its generic plan's scans of datapump_control
// or of one of its indexes, as "node type/index name".
func genericScans(t *testing.T, s *Store) func(name, q, args string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	require.NoError(t, err)
	t.Cleanup(conn.Release)
	_, err = conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `RESET plan_cache_mode`) })
	return func(name, q, args string) []string {
		t.Helper()
		_, err := conn.Exec(ctx, "PREPARE "+name+" AS "+q, pgx.QueryExecModeSimpleProtocol)
		require.NoError(t, err, "prepare %s", name)
		var doc []struct{ Plan planNode }
		var js string
		require.NoError(t, conn.QueryRow(ctx, "EXPLAIN (FORMAT JSON) EXECUTE "+name+"("+args+")", pgx.QueryExecModeSimpleProtocol).Scan(&js))
		require.NoError(t, json.Unmarshal([]byte(js), &doc))
		var out []string
		var walk func(n planNode)
		walk = func(n planNode) {
			if strings.HasSuffix(n.Type, " Scan") && (n.Relation == "datapump_control" || strings.HasPrefix(n.Index, "datapump_control_")) {
				out = append(out, n.Type+"/"+n.Index)
			}
			for _, c := range n.Plans {
				walk(c)
			}
		}
		walk(doc[0].Plan)
		require.NotEmpty(t, out, "%s reads the control table", name)
		return out
	}
}

// planNode is one node of EXPLAIN (FORMAT JSON); Loops and Rows are set
// by EXPLAIN (ANALYZE).
type planNode struct {
	Type     string     `json:"Node Type"`
	Relation string     `json:"Relation Name"`
	Index    string     `json:"Index Name"`
	CTE      string     `json:"CTE Name"`
	Loops    int        `json:"Actual Loops"`
	Rows     int        `json:"Actual Rows"`
	Plans    []planNode `json:"Plans"`
}

// TestControlKeyLeadsWithItemID: the control record's primary key is
// (item_id, item_type) after the migrations, so the pump's many probes by
// key compare a bigint first (migration 00006).
func TestControlKeyLeadsWithItemID(t *testing.T) {
	testDSN(t)
	t.Parallel()
	s := openFresh(t, storetest.Sources())
	var cols []string
	require.NoError(t, s.pool.QueryRow(context.Background(), `
		SELECT array_agg(a.attname ORDER BY k.n)
		FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indexrelid = 'datapump_control_pkey'::regclass AND i.indisprimary`).Scan(&cols))
	require.Equal(t, []string{"item_id", "item_type"}, cols)
}

// TestClaimPendingReadsItsResultsOnce: a claim returns what it updated and
// inserted in created-at order without joining them back to its candidates.
// With no statistics, the planner estimated one candidate and joined the
// two by nested loop, reading every claimed record once per candidate: a
// claim of 500 items compared 250,000 pairs (65 % of its CPU). Each node
// over the claim's own results must run once.
func TestClaimPendingReadsItsResultsOnce(t *testing.T) {
	testDSN(t)
	t.Parallel()
	s, created, _ := claimCandidates(t)

	plan := explainClaim(t, s, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: created.Add(-time.Hour), Limit: 300, Owner: "w"})
	var reads int
	var walk func(n planNode)
	walk = func(n planNode) {
		if n.CTE == "ins" || n.CTE == "upd" || n.CTE == "claimed" {
			reads++
			require.Equal(t, 1, n.Loops, "the claim reads CTE %s %d times", n.CTE, n.Loops)
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	walk(plan)
	require.Positive(t, reads, "the plan reads the claim's results")
	require.Equal(t, 300, plan.Rows, "the claim returns its 300 items")
}

// claimCandidates opens a fresh store with 400 pending source rows of
// biller b1 (every third a paperless registration, the rest payments),
// created a minute ago a microsecond apart, and returns it, their first
// created-at and their keys.
func claimCandidates(t *testing.T) (*Store, time.Time, []store.ItemKey) {
	t.Helper()
	ctx := context.Background()
	s := openFresh(t, storetest.Sources())
	created := time.Now().Add(-time.Minute).UTC()
	demo := make([]store.DemoItem, 400)
	for i := range demo {
		typ := items.Payment
		if i%3 == 2 {
			typ = items.Paperless
		}
		demo[i] = store.DemoItem{ItemType: typ, BillerID: "b1", AmountCents: 100, Email: "a@example.com", CreatedAt: created.Add(time.Duration(i) * time.Microsecond)}
	}
	require.NoError(t, s.DemoSchemaCreate(ctx))
	keys, err := s.DemoItemsInsert(ctx, demo)
	require.NoError(t, err)
	return s, created, keys
}

// explainClaim runs a claim's generic plan (as a prepared statement ends
// up with: it knows neither the biller nor the limit) under EXPLAIN
// ANALYZE in a transaction it rolls back, and returns the plan.
func explainClaim(t *testing.T, s *Store, p store.ControlClaimPendingParams) planNode {
	t.Helper()
	ctx := context.Background()
	q, args := s.claimPendingQuery(p)
	tx, err := s.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	_, err = tx.Exec(ctx, "SET LOCAL plan_cache_mode = force_generic_plan")
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "PREPARE claim_pending AS "+q, pgx.QueryExecModeSimpleProtocol)
	require.NoError(t, err)
	params := make([]string, len(args))
	for i := range params {
		params[i] = fmt.Sprintf("$%d", i+1)
	}
	var js string
	require.NoError(t, tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_pending("+strings.Join(params, ", ")+")",
		append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...).Scan(&js))
	var doc []struct{ Plan planNode }
	require.NoError(t, json.Unmarshal([]byte(js), &doc))
	return doc[0].Plan
}

// TestClaimPendingProbesEachCandidatesRecordOnce: a claim reads each
// candidate's control record once, in the candidate scan, and looks up
// again only the candidates that have one (a New record, to lock it);
// the others go to the insert without a second look. Of 400 source rows,
// 10 with New records, a claim of 300 probes the key 400 + 2 × 10 times
// (the lock and the update of the ten; the statement before also probed
// each of its 300 candidates twice more), and moves the 10 and inserts 290.
func TestClaimPendingProbesEachCandidatesRecordOnce(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	s, created, keys := claimCandidates(t)
	for _, k := range keys[:10] {
		_, err := s.pool.Exec(ctx, `INSERT INTO datapump_control (item_type, item_id, biller_id, status) VALUES ($1, $2, 'b1', 'New')`, k.ItemType, k.ItemID)
		require.NoError(t, err)
	}

	plan := explainClaim(t, s, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: created.Add(-time.Hour), Limit: 300, Owner: "w"})
	probes := 0
	var walk func(n planNode)
	walk = func(n planNode) {
		if n.Type == "Index Scan" && n.Index == "datapump_control_pkey" {
			probes += n.Loops
		}
		for _, c := range n.Plans {
			walk(c)
		}
	}
	walk(plan)
	require.Equal(t, 420, probes, "every source row once, and the ten with a record twice more, to lock and to update them")
	require.Equal(t, 300, plan.Rows, "the claim returns its 300 items")

	// The same claim for real (the plan's ran in a transaction rolled back).
	claimed, err := s.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: created.Add(-time.Hour), Limit: 300, Owner: "w"})
	require.NoError(t, err)
	require.Len(t, claimed, 300)
	versions := map[int64]int{}
	for _, c := range claimed {
		versions[c.Version]++
	}
	require.Equal(t, map[int64]int{2: 10, 1: 290}, versions, "the ten New records moved to Fetched, 290 records inserted")
}
