package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
)

// TestQueryPlansUseIndexes keeps the hot queries off full table scans: the
// pending count and claim read the (biller_id, created_at) index of each
// source table and probe the control table by primary key, so their cost
// follows the rows since the cut-over rather than the table; the rescuer
// and the fenced updates use the control table's indexes, and the backlog
// count reads only the records that are not Processed.
func TestQueryPlansUseIndexes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var srcs []store.Source
	for _, it := range items.Builtin() {
		srcs = append(srcs, it.Source)
	}
	s, err := Open(ctx, Config{Path: filepath.Join(t.TempDir(), "plan.db"), Sources: srcs})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	require.NoError(t, s.Migrate(ctx))
	require.NoError(t, s.DemoSchemaCreate(ctx))

	plan := func(q string, args ...any) []string {
		t.Helper()
		rows, err := s.read.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, args...)
		require.NoError(t, err)
		defer rows.Close()
		var out []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
			out = append(out, detail)
		}
		require.NoError(t, rows.Err())
		return out
	}
	// A SCAN is fine only of a JSON parameter, a subquery's result or a constant row (n, p, cutoff).
	noTableScan := func(name string, lines []string) {
		t.Helper()
		for _, l := range lines {
			if !strings.HasPrefix(l, "SCAN ") {
				continue
			}
			ok := strings.HasPrefix(l, "SCAN json_each") || strings.HasPrefix(l, "SCAN (subquery") ||
				strings.HasPrefix(l, "SCAN CONSTANT ROW") || l == "SCAN n" || l == "SCAN p" || l == "SCAN cutoff"
			require.True(t, ok, "%s scans a table: %q in\n%s", name, l, strings.Join(lines, "\n"))
		}
	}
	requireLine := func(name string, lines []string, want string) {
		t.Helper()
		for _, l := range lines {
			if strings.Contains(l, want) {
				return
			}
		}
		require.Failf(t, "plan", "%s: no %q in\n%s", name, want, strings.Join(lines, "\n"))
	}

	pending := plan(s.sources.pendingCount, append([]any{sql.Named("billers", `[["b1",""]]`), sql.Named("full", false)}, s.sources.args...)...)
	noTableScan("pending count", pending)
	requireLine("pending count", pending, "payments_biller_created")
	requireLine("pending count", pending, "paperless_registrations_biller_created")
	requireLine("pending count", pending, "SEARCH c USING PRIMARY KEY")
	requireLine("pending count", pending, "SEARCH w USING PRIMARY KEY")

	list := plan(s.sources.pendingList, append([]any{sql.Named("billers", `[["b1",""]]`), sql.Named("older_than", 1),
		sql.Named("limit", 5)}, s.sources.args...)...)
	noTableScan("pending list", list)
	requireLine("pending list", list, "payments_biller_created")
	requireLine("pending list", list, "paperless_registrations_biller_created")
	requireLine("pending list", list, "SEARCH c USING PRIMARY KEY")
	requireLine("pending list", list, "SEARCH w USING PRIMARY KEY")

	claim := plan(s.sources.claimPending, append([]any{sql.Named("biller", "b1"), sql.Named("owner", "w"),
		sql.Named("cutover", ""), sql.Named("from", ""), sql.Named("limit", 5)}, s.sources.args...)...)
	noTableScan("claim pending", claim)
	requireLine("claim pending", claim, "payments_biller_created")
	requireLine("claim pending", claim, "SEARCH c USING PRIMARY KEY")
	requireLine("claim pending", claim, "SEARCH w USING PRIMARY KEY")

	advance := plan(advanceWatermarksSQL, sql.Named("scanned", `[["b1","payment","",null]]`), sql.Named("before", ""), sql.Named("now", 1))
	noTableScan("advance watermarks", advance)

	marked := plan(markQueuedSQL, sql.Named("items", "[]"))
	noTableScan("mark queued", marked)
	requireLine("mark queued", marked, "SEARCH datapump_control USING PRIMARY KEY")

	stuck := plan(listStuckSQL, sql.Named("now", 1), sql.Named("older_than", 1), sql.Named("limit", 1))
	noTableScan("list stuck", stuck)
	requireLine("list stuck", stuck, "datapump_control_status_updated")

	reclaim := plan(reclaimExpiredSQL, sql.Named("now", 1), sql.Named("limit", 1))
	noTableScan("reclaim expired", reclaim)
	requireLine("reclaim expired", reclaim, "datapump_control_status_lease")

	for _, p := range []store.ControlRetryParams{{}, {BillerID: "b1", ItemType: "payment", FailedFrom: time.Unix(1, 0), FailedTo: time.Unix(2, 0)}, {Keys: []store.ItemKey{{ItemType: "payment", ItemID: 1}}}} {
		where, args, err := retryFilter(p)
		require.NoError(t, err)
		noTableScan("retry (dry run)", plan(`SELECT `+controlColumns+` FROM datapump_control WHERE `+where+retryOrder, args...))
		retry := plan(fmt.Sprintf(retrySQL, where), append(args, sql.Named("now", 1))...)
		noTableScan("retry", retry)
		requireLine("retry", retry, "SEARCH datapump_control USING PRIMARY KEY")
	}

	// The backlog count reads the open records from their partial index;
	// only operators' count with Processed reads the table.
	count := plan(countByStatusSQL(false))
	requireLine("count by status", count, "USING COVERING INDEX datapump_control_open_biller_status")
	for _, l := range count {
		require.False(t, strings.HasPrefix(l, "SCAN datapump_control") && !strings.Contains(l, "datapump_control_open_biller_status"),
			"count by status reads the table: %q in\n%s", l, strings.Join(count, "\n"))
	}
	requireLine("count by status with Processed", plan(countByStatusSQL(true)), "SCAN datapump_control")

	noTableScan("bump", plan(bumpSQL, sql.Named("now", 1), sql.Named("items", "[]")))
	noTableScan("claim item", plan(claimItemSQL, sql.Named("owner", "w"), sql.Named("takeover", 0), sql.Named("now", 1),
		sql.Named("lease", 1), sql.Named("type", "payment"), sql.Named("id", 1), sql.Named("version", 1)))
	noTableScan("finish", plan(finishSQL, sql.Named("status", "Processed"), sql.Named("error", ""),
		sql.Named("type", "payment"), sql.Named("id", 1), sql.Named("version", 1)))
}
