package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/catalog/catalogtest"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlite"
	"github.com/datapump/datapump/internal/store/storetest"
)

// open returns a migrated store on a fresh file in a temporary directory.
func open(t *testing.T, sources []store.Source) (*sqlite.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shard.db")
	s, err := sqlite.Open(context.Background(), sqlite.Config{Path: path, Sources: sources})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	require.NoError(t, s.Migrate(context.Background()))
	return s, path
}

// rawDB opens a second connection to the file, as another process would.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", sqlite.DSN(path, true))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	return db
}

func TestStore(t *testing.T) {
	t.Parallel()
	storetest.Exercise(context.Background(), t, storetest.Features{ConcurrentWriters: false},
		func(t *testing.T, sources []store.Source) storetest.Harness {
			s, path := open(t, sources)
			raw := rawDB(t, path)
			return storetest.Harness{
				Store: s, Demo: s, Leaser: s,
				ControlInsertNew: func(ctx context.Context, key store.ItemKey, billerID string) error {
					_, err := raw.ExecContext(ctx, `INSERT INTO datapump_control
						(item_type, item_id, biller_id, status, created_at, updated_at)
						VALUES (?, ?, ?, 'New', CAST(unixepoch('subsec') * 1000 AS INTEGER), CAST(unixepoch('subsec') * 1000 AS INTEGER))`,
						key.ItemType, key.ItemID, billerID)
					return err
				},
			}
		})
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	catalogtest.Exercise(context.Background(), t, catalogtest.Features{},
		func(t *testing.T, seed []catalog.Biller) catalog.Catalog {
			s, _ := open(t, nil)
			for _, b := range seed {
				require.NoError(t, s.BillerUpsert(context.Background(), b))
			}
			return s
		})
}

func TestOpenAppliesPragmas(t *testing.T) {
	t.Parallel()
	_, path := open(t, storetest.Sources())
	db := rawDB(t, path)
	var mode string
	var busy, fk int
	require.NoError(t, db.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.NoError(t, db.QueryRow(`PRAGMA busy_timeout`).Scan(&busy))
	require.NoError(t, db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk))
	require.Equal(t, "wal", mode)
	require.Equal(t, 10000, busy)
	require.Equal(t, 1, fk)

	// WAL is a property of the file: a connection without pragmas sees it.
	plain, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	defer plain.Close()
	require.NoError(t, plain.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.Equal(t, "wal", mode)

	require.Contains(t, sqlite.DSN(path, true), "_txlock=immediate", "writes begin immediate")
	require.Contains(t, sqlite.DSN(path, false), "query_only", "the read pool cannot write")
}

func TestOpenRefusesBadConfig(t *testing.T) {
	t.Parallel()
	good := storetest.Sources()[0]
	cases := []struct {
		name  string
		cfg   sqlite.Config
		field string
	}{
		{"no path", sqlite.Config{}, "path"},
		{"memory", sqlite.Config{Path: ":memory:"}, "path"},
		{"table", sqlite.Config{Path: "x.db", Sources: []store.Source{func() store.Source { s := good; s.Table = "payments; DROP TABLE accounts"; return s }()}}, "table"},
		{"key column", sqlite.Config{Path: "x.db", Sources: []store.Source{func() store.Source { s := good; s.KeyColumn = "id\""; return s }()}}, "key_column"},
		{"created at column", sqlite.Config{Path: "x.db", Sources: []store.Source{func() store.Source { s := good; s.CreatedAtColumn = "a.b.c"; return s }()}}, "created_at_column"},
		{"enrich query", sqlite.Config{Path: "x.db", Sources: []store.Source{func() store.Source { s := good; s.EnrichQuery = "SELECT 1"; return s }()}}, "enrich_query"},
		{"duplicate", sqlite.Config{Path: "x.db", Sources: []store.Source{good, good}}, "defined twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.cfg.Path == "x.db" {
				tc.cfg.Path = filepath.Join(t.TempDir(), "x.db")
			}
			_, err := sqlite.Open(context.Background(), tc.cfg)
			require.ErrorContains(t, err, tc.field)
			if tc.cfg.Path != "" && tc.cfg.Path != ":memory:" {
				require.NoFileExists(t, tc.cfg.Path, "nothing is created for a refused config")
			}
		})
	}
}

// TestMigrateLeavesSourceTablesAlone: an application's own tables,
// including its own goose version table, are untouched by Migrate.
func TestMigrateLeavesSourceTablesAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "shard.db")
	db := rawDB(t, path)
	_, err := db.Exec(`CREATE TABLE goose_db_version (id INTEGER PRIMARY KEY, version_id INTEGER, is_applied INTEGER, tstamp TEXT);
		INSERT INTO goose_db_version (version_id, is_applied) VALUES (42, 1);
		CREATE TABLE payments (id INTEGER PRIMARY KEY, note TEXT); INSERT INTO payments (note) VALUES ('theirs');`)
	require.NoError(t, err)

	s, err := sqlite.Open(ctx, sqlite.Config{Path: path})
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.Migrate(ctx))
	require.NoError(t, s.Migrate(ctx))

	var version int
	require.NoError(t, db.QueryRow(`SELECT MAX(version_id) FROM goose_db_version`).Scan(&version))
	require.Equal(t, 42, version, "the application's goose table is not ours")
	var note string
	require.NoError(t, db.QueryRow(`SELECT note FROM payments`).Scan(&note))
	require.Equal(t, "theirs", note)

	rows, err := db.Query(`SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name`)
	require.NoError(t, err)
	defer rows.Close()
	var tables []string
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		tables = append(tables, n)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"datapump_biller", "datapump_control", "datapump_goose_version", "datapump_lease", "datapump_watermark", "goose_db_version", "payments", "sqlite_sequence"}, tables)
}

// TestSharedTableSource: two item types in one schema-qualified table,
// told apart by a type column, are counted and claimed separately.
func TestSharedTableSource(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	mk := func(itemType, value string) store.Source {
		return store.Source{
			ItemType: itemType, Table: "main.work_items", KeyColumn: "item_no", BillerColumn: "biller",
			CreatedAtColumn: "inserted", TypeColumn: "kind", TypeValue: value,
			EnrichQuery: `SELECT item_no, kind, biller FROM work_items WHERE item_no = :id`,
		}
	}
	s, path := open(t, []store.Source{mk("refund", "R"), mk("invoice", "I")})
	db := rawDB(t, path)
	_, err := db.Exec(`CREATE TABLE work_items (item_no INTEGER PRIMARY KEY, kind TEXT, biller TEXT, inserted TEXT);
		INSERT INTO work_items VALUES
			(1, 'R', 'b1', '2026-01-01 10:00:00.000'),
			(2, 'I', 'b1', '2026-01-01 10:00:01.000'),
			(3, 'R', 'b1', '2026-01-01 10:00:02.000'),
			(4, 'X', 'b1', '2026-01-01 10:00:03.000'),
			(5, 'I', 'b2', '2026-01-01 09:00:00.000');`)
	require.NoError(t, err)

	got, err := s.PendingCount(ctx, store.PendingCountParams{Billers: []store.BillerCutover{
		{BillerID: "b1"}, {BillerID: "b2", CutoverAt: time.Date(2026, 1, 1, 9, 30, 0, 0, time.UTC)},
	}})
	require.NoError(t, err)
	require.Equal(t, []store.BillerPending{{BillerID: "b1", Pending: 3, OldestCreatedAt: time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)}}, got,
		"kind X belongs to no item type; b2's item is before its cut-over")

	listed, err := s.PendingList(ctx, store.PendingListParams{Billers: []store.BillerCutover{
		{BillerID: "b1"}, {BillerID: "b2", CutoverAt: time.Date(2026, 1, 1, 9, 30, 0, 0, time.UTC)},
	}, OlderThan: time.Hour, Limit: 10})
	require.NoError(t, err)
	require.Equal(t, []store.SourceRow{
		{ItemKey: store.ItemKey{ItemType: "refund", ItemID: 1}, BillerID: "b1", CreatedAt: time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)},
		{ItemKey: store.ItemKey{ItemType: "invoice", ItemID: 2}, BillerID: "b1", CreatedAt: time.Date(2026, 1, 1, 10, 0, 1, 0, time.UTC)},
		{ItemKey: store.ItemKey{ItemType: "refund", ItemID: 3}, BillerID: "b1", CreatedAt: time.Date(2026, 1, 1, 10, 0, 2, 0, time.UTC)},
	}, listed, "the pending list tells the item types of one table apart")

	claimed, err := s.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: "b1", Limit: 10, Owner: "w"})
	require.NoError(t, err)
	var keys []store.ItemKey
	for _, c := range claimed {
		keys = append(keys, c.ItemKey)
	}
	require.Equal(t, []store.ItemKey{{ItemType: "refund", ItemID: 1}, {ItemType: "invoice", ItemID: 2}, {ItemType: "refund", ItemID: 3}}, keys)
	require.Equal(t, time.Date(2026, 1, 1, 10, 0, 1, 0, time.UTC), claimed[1].SourceCreatedAt)

	_, err = s.ItemSource(ctx, store.ItemKey{ItemType: "invoice", ItemID: 1})
	require.ErrorIs(t, err, store.ErrNotFound, "row 1 is a refund, not an invoice")
	src, err := s.ItemSource(ctx, store.ItemKey{ItemType: "refund", ItemID: 1})
	require.NoError(t, err)
	require.Equal(t, "b1", src.BillerID)
	row, err := s.ItemEnrich(ctx, store.ItemKey{ItemType: "invoice", ItemID: 2})
	require.NoError(t, err)
	require.Equal(t, "I", row["kind"])
}

// TestTwoStoresOneFile: two stores on one file (two pump processes on one
// embedded database) claim and finish items concurrently; BEGIN IMMEDIATE
// and the busy timeout keep SQLITE_BUSY away and no item is taken twice.
func TestTwoStoresOneFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, path := open(t, storetest.Sources())
	b, err := sqlite.Open(ctx, sqlite.Config{Path: path, Sources: storetest.Sources()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	require.NoError(t, b.Migrate(ctx), "a second migrate on the same file")
	require.NoError(t, a.DemoSchemaCreate(ctx))
	const total = 80
	rows := make([]store.DemoItem, total)
	for i := range rows {
		rows[i] = store.DemoItem{ItemType: "payment", BillerID: "b1", AmountCents: 1}
	}
	_, err = a.DemoItemsInsert(ctx, rows)
	require.NoError(t, err)

	var (
		mu       sync.Mutex
		finished = map[store.ItemKey]int{}
		wg       sync.WaitGroup
		errs     = make(chan error, 8)
	)
	for w := 0; w < 8; w++ {
		s := a
		if w%2 == 1 {
			s = b
		}
		owner := fmt.Sprintf("w%d", w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- work(ctx, s, owner, func(k store.ItemKey) {
				mu.Lock()
				finished[k]++
				mu.Unlock()
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, finished, total)
	for k, n := range finished {
		require.Equal(t, 1, n, "%s finished %d times", k, n)
	}
}

// work runs a biller consumer and an item consumer in one loop until
// nothing is pending.
func work(ctx context.Context, s *sqlite.Store, owner string, done func(store.ItemKey)) error {
	for {
		claimed, err := s.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: "b1", Limit: 5, Owner: owner})
		if err != nil || len(claimed) == 0 {
			return err
		}
		fenced := make([]store.Fenced, len(claimed))
		for i, c := range claimed {
			fenced[i] = store.Fenced{ItemKey: c.ItemKey, Version: c.Version}
		}
		if _, err := s.ControlMarkQueued(ctx, fenced); err != nil {
			return err
		}
		for _, c := range claimed {
			ic, err := s.ControlClaimItem(ctx, store.ControlClaimItemParams{Key: c.ItemKey, Owner: owner, Lease: time.Minute})
			if err != nil {
				return err
			}
			if ic.Outcome != store.ClaimAcquired {
				return fmt.Errorf("%s: claim of own fetched item: %s", c.ItemKey, ic.Outcome)
			}
			ok, err := s.ControlFinish(ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: c.ItemKey, Version: ic.Control.Version}, Status: store.StatusProcessed})
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s: finish lost", c.ItemKey)
			}
			done(c.ItemKey)
		}
	}
}
