package sqlserver

import (
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	mssql "github.com/microsoft/go-mssqldb"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/storetest"
)

var update = flag.Bool("update", false, "rewrite testdata/statements.golden from the adapter's statements")

const goldenFile = "testdata/statements.golden"

// statement is one T-SQL statement the adapter sends, as built for fixed
// inputs, with its arguments.
type statement struct {
	name string
	sql  string
	args []any
}

// goldenSources are the built-in item types plus one type sharing a
// schema-qualified table through a type column.
func goldenSources() []store.Source {
	return append(storetest.Sources(), store.Source{
		ItemType: "refund", Table: "app.work_items", KeyColumn: "ItemId", BillerColumn: "Biller",
		CreatedAtColumn: "Inserted", TypeColumn: "Kind", TypeValue: "R",
		EnrichQuery: "SELECT w.ItemId AS item_id, w.Note FROM app.work_items w WHERE w.ItemId = :id",
	})
}

func goldenStore(t *testing.T) *Store {
	t.Helper()
	s, err := newStore(nil, Config{DSN: "unused", Sources: goldenSources()}, DriverSQLAuth)
	require.NoError(t, err)
	return s
}

// allStatements builds every statement the adapter can send, for fixed inputs.
func allStatements(t *testing.T) []statement {
	t.Helper()
	s := goldenStore(t)
	var out []statement
	add := func(name string) func(string, params) {
		return func(q string, p params) { out = append(out, statement{name: name, sql: q, args: p}) }
	}
	must := func(q string, p params, err error) (string, params) {
		t.Helper()
		require.NoError(t, err)
		return q, p
	}
	at := time.Date(2026, 3, 4, 5, 6, 7, 8_000_000, time.UTC)
	key := store.ItemKey{ItemType: items.Payment, ItemID: 42}
	fenced := store.Fenced{ItemKey: key, Version: 3}
	billers, err := billersJSON([]store.BillerCutover{{BillerID: "b1", CutoverAt: at}, {BillerID: "b2"}})
	require.NoError(t, err)

	add("now")(nowSQL, nil)
	add("compatibility-level")(compatibilityLevelSQL, nil)
	add("create-schema")(s.createSchemaSQL())
	add("migrate-lock")(appLockSQL, params{"datapump:migrate:dbo", migrateLockTimeoutMS})
	add("migrate-unlock")(appUnlockSQL, params{"datapump:migrate:dbo"})

	add("control-get")(s.controlGetSQL(key))
	add("mark-queued")(must(s.markQueuedSQL([]store.Fenced{fenced, {ItemKey: store.ItemKey{ItemType: items.Paperless, ItemID: 7}, Version: 1}})))
	claim := store.ControlClaimItemParams{Key: key, BillerID: "b1", Owner: "item-consumer-1", Lease: time.Minute, InsertIfAbsent: true, Origin: "direct"}
	add("claim-item")(s.claimItemSQL(claim, 60_000))
	add("claim-insert")(s.claimInsertSQL(claim, store.SourceRow{ItemKey: key, BillerID: "b1", CreatedAt: at}, 60_000, "direct"))
	add("claim-batch")(s.claimBatchSQL(`[{"t":"paperless","i":7,"o":1,"w":"item-consumer-1","l":60000},{"t":"payment","i":42,"o":0,"w":"item-consumer-1","l":60000}]`))
	add("extend-lease")(s.extendLeaseSQL(fenced, 60_000))
	add("finish-processed")(s.finishSQL(store.ControlFinishParams{Fenced: fenced, Status: store.StatusProcessed}))
	add("finish-failed")(s.finishSQL(store.ControlFinishParams{Fenced: fenced, Status: store.StatusFailed, Error: "400 bad request"}))
	add("finish-batch")(s.finishBatchSQL(`[{"t":"paperless","i":7,"v":2,"o":1,"s":"Failed","e":"400 bad request"},{"t":"payment","i":42,"v":3,"o":0,"s":"Processed"}]`))
	add("release")(s.releaseSQL(store.ControlReleaseParams{Fenced: fenced, Error: "503", RetryIn: time.Second}, 1000))
	add("skip")(s.skipSQL(key, "biller switched off"))
	add("list-stuck")(s.listStuckSQL(300_000, 100))
	add("reclaim-expired")(s.reclaimExpiredSQL(100))
	add("control-list")(must(s.controlListSQL(store.ControlListParams{})))
	add("control-list-filtered")(must(s.controlListSQL(store.ControlListParams{BillerID: "b1", ItemType: items.Payment,
		Statuses: []store.Status{store.StatusFetched, store.StatusQueued}, Limit: 10})))
	add("count-by-status")(s.countByStatusSQL(false), nil)
	add("count-by-status-with-processed")(s.countByStatusSQL(true), nil)
	add("retry")(must(s.retrySQL(store.ControlRetryParams{}, false)))
	filtered := store.ControlRetryParams{BillerID: "b1", ItemType: items.Payment, FailedFrom: at, FailedTo: at.Add(time.Hour),
		Keys: []store.ItemKey{key}, Limit: 10}
	add("retry-filtered")(must(s.retrySQL(filtered, false)))
	add("retry-dry-run")(must(s.retrySQL(filtered, true)))

	add("pending-count")(must(s.pendingCountSQL(billers, false, 0)))
	add("pending-count-advance")(must(s.pendingCountSQL(billers, false, time.Minute)))
	add("pending-count-full-advance")(must(s.pendingCountSQL(billers, true, time.Minute)))
	add("claim-pending")(s.claimPendingSQL(store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: at, From: at.Add(time.Hour), Limit: 50, Owner: "biller-consumer-1"}))
	add("pending-list")(s.pendingListSQL(billers, 600_000, 100))
	add("item-source-payment")(s.itemSourceSQL(s.sources[items.Payment], key))
	add("item-source-refund")(s.itemSourceSQL(s.sources["refund"], store.ItemKey{ItemType: "refund", ItemID: 5}))
	for _, src := range s.order {
		add("enrich-"+src.ItemType)(src.enrich, params{int64(42)})
	}
	queries, err := json.Marshal([]string{s.sources[items.Payment].enrich, s.sources[items.Paperless].enrich})
	require.NoError(t, err)
	add("item-enrich-batch")(enrichBatchSQL(`[{"o":0,"i":42,"q":0},{"o":1,"i":7,"q":1},{"o":2,"i":43,"q":0}]`, string(queries)))

	add("lease-acquire")(s.leaseAcquireSQL("publisher", "pod-a", 15_000))
	add("lease-release")(s.leaseReleaseSQL("publisher", "pod-a"))

	add("biller-list")(s.billerListSQL(), nil)
	add("biller-get")(s.billerGetSQL("b1"))
	biller := catalog.Biller{ID: "b1", Name: "Acme", Shard: "shard1", Mode: catalog.ModePoll, CutoverAt: at,
		CIS: catalog.CISEndpoint{BaseURL: "https://cis.example", Auth: catalog.AuthAPIKey, APIKeyEnv: "KEY", Timeout: 2 * time.Second, RatePerSecond: 5, MaxConcurrent: 2}}
	add("biller-upsert")(s.billerUpsertSQL(biller, `["a","b"]`))
	add("biller-set-mode")(s.billerSetModeSQL(catalog.SetModeParams{BillerID: "b1", Mode: catalog.ModePoll}, catalog.ModePoll))

	add("demo-schema-lock")(appLockTxSQL("datapump:demo-schema:dbo"))
	for i, q := range s.demoSchemaSQL() {
		add(fmt.Sprintf("demo-schema-%d", i+1))(q, nil)
	}
	add("demo-insert-accounts")(demoInsertSQL(s.demoAccounts(), `[{"id":77,"o":0,"b":"b1","e":"a@example.com"}]`, `[{"o":0,"b":"b1","e":"c@example.com"}]`, true))
	for _, typ := range []string{items.Payment, items.Paperless} {
		add("demo-insert-" + typ)(demoInsertSQL(s.demoItemTables()[typ], `[{"id":9,"o":0,"b":"b1","a":1,"m":5}]`, `[{"o":0,"b":"b1","a":1,"m":5}]`, false))
	}

	fsys, err := renderMigrations(s.t.schema)
	require.NoError(t, err)
	names, err := fs.Glob(fsys, "*.sql")
	require.NoError(t, err)
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		require.NoError(t, err)
		add("migration "+name)(string(b), nil)
	}
	return out
}

func TestStatementsGolden(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("-- Every T-SQL statement the SQL Server adapter sends, built for fixed inputs\n")
	b.WriteString("-- (schema dbo, the built-in item types and a shared-table type). Regenerate\n")
	b.WriteString("-- with: go test ./internal/store/sqlserver -run TestStatementsGolden -update\n")
	for _, st := range allStatements(t) {
		fmt.Fprintf(&b, "\n-- name: %s\n", st.name)
		for i, a := range st.args {
			fmt.Fprintf(&b, "-- @p%d %s\n", i+1, describeArg(a))
		}
		b.WriteString(strings.TrimRight(st.sql, "\n"))
		b.WriteString("\n")
	}
	got := b.String()
	if *update {
		require.NoError(t, os.WriteFile(goldenFile, []byte(got), 0o644))
	}
	want, err := os.ReadFile(goldenFile)
	require.NoError(t, err, "run with -update to create %s", goldenFile)
	require.Equal(t, string(want), got, "statements changed: review them against the locking notes, then run with -update")
}

// describeArg renders an argument with the SQL type the driver sends it as.
func describeArg(a any) string {
	switch x := a.(type) {
	case string:
		return fmt.Sprintf("nvarchar %q", x)
	case mssql.VarChar:
		return fmt.Sprintf("varchar %q", string(x))
	case int64:
		return fmt.Sprintf("bigint %d", x)
	case int32:
		return fmt.Sprintf("int %d", x)
	case float64:
		return fmt.Sprintf("float %v", x)
	case bool:
		return fmt.Sprintf("bit %v", x)
	case time.Time:
		return "datetimeoffset " + x.Format(time.RFC3339Nano)
	case sql.NullTime:
		return "datetimeoffset NULL"
	case sql.NullString:
		return "nvarchar NULL"
	}
	return fmt.Sprintf("%T %v", a, a)
}

var placeholder = regexp.MustCompile(`@p(\d+)\b`)

// stripLiterals blanks out '…' string literals and -- comments, so that
// checks on the statement's structure do not look inside them.
func stripLiterals(q string) string {
	var b strings.Builder
	inString := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case inString && c == '\'' && i+1 < len(q) && q[i+1] == '\'':
			i++
		case c == '\'':
			inString = !inString
			b.WriteByte('\'')
		case inString:
			b.WriteByte(' ')
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
			b.WriteByte('\n')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

var (
	hintList  = regexp.MustCompile(`WITH \(([A-Z, ]+)\)`)
	anyHint   = regexp.MustCompile(`\b(ROWLOCK|UPDLOCK|READPAST|HOLDLOCK|READCOMMITTEDLOCK|NOLOCK|READUNCOMMITTED|TABLOCK|TABLOCKX|XLOCK|PAGLOCK|SERIALIZABLE|FORCESEEK)\b`)
	ownTable  = regexp.MustCompile(`(?i)\b(FROM|JOIN|INTO|UPDATE|TABLE|ON)\s+\[?(datapump_|accounts\b|payments\b|paperless_registrations\b)`)
	otherTime = regexp.MustCompile(`(?i)\b(GETDATE|GETUTCDATE|SYSDATETIME|SYSDATETIMEOFFSET|CURRENT_TIMESTAMP)\b`)
)

// TestStatementsAreWellFormed checks, without a server, what review of the
// statements would otherwise have to catch by eye.
func TestStatementsAreWellFormed(t *testing.T) {
	t.Parallel()
	for _, st := range allStatements(t) {
		q := stripLiterals(st.sql)
		require.NotContains(t, st.sql, schemaPlaceholder, "%s: schema placeholder left", st.name)

		// Every placeholder has an argument and every argument a placeholder.
		used := map[int]bool{}
		for _, m := range placeholder.FindAllStringSubmatch(q, -1) {
			n, err := strconv.Atoi(m[1])
			require.NoError(t, err)
			used[n] = true
		}
		for n := range used {
			require.LessOrEqual(t, n, len(st.args), "%s: @p%d has no argument", st.name, n)
		}
		for i := range st.args {
			require.True(t, used[i+1], "%s: argument @p%d is never used", st.name, i+1)
		}

		// Brackets, parentheses and quotes balance.
		require.Equal(t, strings.Count(q, "("), strings.Count(q, ")"), "%s: parentheses", st.name)
		require.Equal(t, strings.Count(q, "["), strings.Count(q, "]"), "%s: brackets", st.name)
		require.Zero(t, strings.Count(q, "'")%2, "%s: quotes", st.name)

		// MERGE is not atomic without HOLDLOCK: the adapter does not use it.
		require.NotRegexp(t, `\bMERGE\b`, q, "%s", st.name)
		// OUTPUT without INTO fails on a table with a trigger.
		for _, part := range strings.Split(q, ";") {
			if strings.Contains(part, "OUTPUT ") {
				require.Regexp(t, `\sINTO @\w+`, part[strings.Index(part, "OUTPUT "):], "%s: OUTPUT without INTO", st.name)
			}
		}
		// Times come from the database's UTC clock only.
		require.NotRegexp(t, otherTime, q, "%s", st.name)
		if strings.HasPrefix(st.name, "enrich-") {
			continue // the operator's query, run as written
		}
		// The pump's and the demo's tables are always schema-qualified.
		require.NotRegexp(t, ownTable, q, "%s: unqualified table", st.name)

		// Locking hints come in the reviewed combinations only.
		hints := hintList.FindAllStringSubmatch(q, -1)
		require.Equal(t, len(anyHint.FindAllString(q, -1)), countHints(hints), "%s: a locking hint outside WITH (…)", st.name)
		for _, h := range hints {
			list := strings.Split(strings.ReplaceAll(h[1], " ", ""), ",")
			require.NotContains(t, list, "NOLOCK", "%s: dirty read", st.name)
			require.NotContains(t, list, "READUNCOMMITTED", "%s: dirty read", st.name)
			require.NotContains(t, list, "TABLOCK", "%s", st.name)
			require.NotContains(t, list, "TABLOCKX", "%s", st.name)
			if slices.Contains(list, "READPAST") {
				require.Contains(t, list, "READCOMMITTEDLOCK", "%s: READPAST needs a locking read under READ_COMMITTED_SNAPSHOT", st.name)
			}
			if slices.Contains(list, "HOLDLOCK") {
				require.Contains(t, list, "UPDLOCK", "%s: HOLDLOCK without UPDLOCK deadlocks two inserters", st.name)
			}
			if slices.Contains(list, "UPDLOCK") && slices.Contains(list, "READPAST") {
				require.Contains(t, list, "ROWLOCK", "%s: a queue read locks rows", st.name)
			}
		}
	}
}

func countHints(lists [][]string) int {
	n := 0
	for _, l := range lists {
		n += len(strings.Split(l[1], ","))
	}
	return n
}

// TestQueueScansMatchFilteredIndexes: a filtered index serves a query only
// when the query's predicate implies the index's filter, so the rescuer's
// and reclaimer's scans must carry each filter as the migration spells it.
// Without the index the UPDLOCK scan would read and lock the whole history.
func TestQueueScansMatchFilteredIndexes(t *testing.T) {
	t.Parallel()
	byName := map[string]string{}
	for _, st := range allStatements(t) {
		byName[st.name] = st.sql
	}
	migration := byName["migration 00001_control.sql"]
	for stmt, filter := range map[string]string{
		"list-stuck":      "status IN (N'Fetched', N'Queued')",
		"reclaim-expired": "status = N'Processing'",
		"retry":           "status = N'Failed'",
	} {
		require.Contains(t, migration, "WHERE "+filter, "the migration has a filtered index on %s", filter)
		require.Contains(t, byName[stmt], filter, "%s carries the index's filter", stmt)
	}
	// The backlog count reads the open records from their filtered index,
	// with the filter as a literal that forced parameterization leaves be.
	open := byName["migration 00005_open_biller_status.sql"]
	require.Contains(t, open, "(biller_id, status)\n    WHERE status <> N'Processed';", "00005 filters the backlog index")
	require.Contains(t, byName["count-by-status"], "WHERE status <> N'Processed'", "the backlog count carries the index's filter")
	require.Contains(t, byName["count-by-status"], "OPTION (RECOMPILE)", "the backlog count's literal is not parameterized")
	require.NotContains(t, byName["count-by-status-with-processed"], "WHERE ", "with Processed, every record is counted")

	// The claim of New records and every fenced update reach the table
	// through its clustered key (item_type, item_id).
	require.Contains(t, migration, "PRIMARY KEY CLUSTERED (item_type, item_id)")
	require.Contains(t, byName["claim-pending"], "JOIN @cand AS cand ON cand.item_type = c.item_type AND cand.item_id = c.item_id")
	for _, stmt := range []string{"extend-lease", "finish-processed", "release"} {
		require.Contains(t, byName[stmt], "WHERE item_type = @p", stmt)
		require.Contains(t, byName[stmt], " AND version = @p", "%s is fenced by version", stmt)
	}
}

func TestMigrationsRender(t *testing.T) {
	t.Parallel()
	fsys, err := renderMigrations("[billing]")
	require.NoError(t, err)
	names, err := fs.Glob(fsys, "*.sql")
	require.NoError(t, err)
	sort.Strings(names)
	require.Equal(t, []string{"00001_control.sql", "00002_biller.sql", "00004_watermark.sql", "00005_open_biller_status.sql"}, names, "versioned files")
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		require.NoError(t, err)
		text := string(b)
		require.NotContains(t, text, schemaPlaceholder)
		require.Contains(t, text, "-- +goose Up")
		require.Contains(t, text, "-- +goose Down")
		require.Regexp(t, `(CREATE TABLE|CREATE INDEX \[\w+\] ON) \[billing\]\.\[datapump_`, text, "%s creates the pump's own objects in the schema", name)
		require.NotRegexp(t, `(?i)\b(payments|paperless_registrations|accounts)\b`, stripLiterals(text), "%s touches no source table", name)
	}
}
