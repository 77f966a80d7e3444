package postgres

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

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
	conn, err := s.pool.Acquire(ctx)
	require.NoError(t, err)
	t.Cleanup(conn.Release)
	_, err = conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `RESET plan_cache_mode`) })

	// scans returns the generic plan's scans of datapump_control or of one
	// of its indexes, as "node type/index name".
	scans := func(name, q, args string) []string {
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

	got, err := s.ControlCountByStatus(ctx, store.ControlCountParams{})
	require.NoError(t, err)
	require.Equal(t, []store.StatusCount{{BillerID: "b1", Status: store.StatusQueued, Count: 1}, {BillerID: "b2", Status: store.StatusProcessing, Count: 1}}, got)
}

// planNode is one node of EXPLAIN (FORMAT JSON).
type planNode struct {
	Type     string     `json:"Node Type"`
	Relation string     `json:"Relation Name"`
	Index    string     `json:"Index Name"`
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
