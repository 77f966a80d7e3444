package sqlserver

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	mssql "github.com/microsoft/go-mssqldb"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/catalog/catalogtest"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/storetest"
)

// dsnVar names the SQL Server the tests below run against. It must be a
// sqlserver:// URL with SQL authentication of a principal that may create
// logins, users and schemas (sa of a test container will do): every test
// gets a fresh schema and a login whose default schema it is, so that the
// built-in enrichment queries, which name their tables unqualified, read
// that test's tables.
const dsnVar = "DATAPUMP_TEST_SQLSERVER_DSN"

func testDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv(dsnVar)
	if dsn == "" {
		t.Skip("set " + dsnVar + " to run")
	}
	return dsn
}

var admin = sync.OnceValues(func() (*sql.DB, error) {
	c, err := mssql.NewConnector(os.Getenv(dsnVar))
	if err != nil {
		return nil, err
	}
	c.SessionInitSQL = sessionInit
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(4)
	return db, nil
})

func randomName(t *testing.T) string {
	t.Helper()
	var b [6]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	return "t_" + hex.EncodeToString(b[:])
}

// freshSchema creates a schema, and a login and user owning it with it as
// their default schema, and returns the schema and a DSN that connects as
// that login. Everything is dropped when the test ends.
func freshSchema(t *testing.T) (string, string) {
	t.Helper()
	dsn := testDSN(t)
	ctx := context.Background()
	u, err := url.Parse(dsn)
	require.NoError(t, err, "%s must be a sqlserver:// URL", dsnVar)
	require.Equal(t, "sqlserver", u.Scheme, "%s must be a sqlserver:// URL", dsnVar)
	db, err := admin()
	require.NoError(t, err)

	name := randomName(t)
	password := "Pw1!" + randomName(t)
	var database string
	require.NoError(t, db.QueryRowContext(ctx, `SELECT DB_NAME()`).Scan(&database))
	// Names are generated (t_ and hex) and the password is hex: nothing to escape.
	for _, stmt := range []string{
		fmt.Sprintf(`CREATE LOGIN [%s] WITH PASSWORD = N'%s', CHECK_POLICY = OFF, DEFAULT_DATABASE = [%s]`, name, password, database),
		fmt.Sprintf(`CREATE USER [%s] FOR LOGIN [%s] WITH DEFAULT_SCHEMA = [%s]`, name, name, name),
		fmt.Sprintf(`EXEC (N'CREATE SCHEMA [%s] AUTHORIZATION [%s]')`, name, name),
		fmt.Sprintf(`GRANT CREATE TABLE TO [%s]`, name),
	} {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	t.Cleanup(func() { dropSchema(t, db, name) })

	u.User = url.UserPassword(name, password)
	q := u.Query()
	q.Set("database", database)
	u.RawQuery = q.Encode()
	return name, u.String()
}

// dropSchema drops the schema's tables, the schema, its user and its login,
// ending the login's sessions first.
func dropSchema(t *testing.T, db *sql.DB, name string) {
	ctx := context.Background()
	_, err := db.ExecContext(ctx, `
		DECLARE @sql nvarchar(max) = N'';
		SELECT @sql += N'DROP TABLE ' + QUOTENAME(SCHEMA_NAME(schema_id)) + N'.' + QUOTENAME(name) + N'; '
		FROM sys.tables WHERE schema_id = SCHEMA_ID(@p1);
		EXEC sp_executesql @sql;`, name)
	require.NoError(t, err, "drop tables of %s", name)
	for _, stmt := range []string{
		fmt.Sprintf(`DROP SCHEMA [%s]`, name),
		fmt.Sprintf(`DROP USER [%s]`, name),
	} {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	var lastErr error
	for range 50 {
		_, lastErr = db.ExecContext(ctx, `
			DECLARE @sql nvarchar(max) = N'';
			SELECT @sql += N'KILL ' + CAST(session_id AS nvarchar(10)) + N'; '
			FROM sys.dm_exec_sessions WHERE login_name = @p1;
			EXEC sp_executesql @sql;`, name)
		if lastErr == nil {
			_, lastErr = db.ExecContext(ctx, fmt.Sprintf(`DROP LOGIN [%s]`, name))
		}
		if lastErr == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, lastErr, "drop login %s", name)
}

// openFresh opens a migrated store on a fresh schema.
func openFresh(t *testing.T, sources []store.Source) *Store {
	t.Helper()
	schema, dsn := freshSchema(t)
	ctx := context.Background()
	s, err := Open(ctx, Config{DSN: dsn, Schema: schema, MaxConns: 8, Sources: sources})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	require.NoError(t, s.Migrate(ctx))
	return s
}

func TestStoreConformance(t *testing.T) {
	testDSN(t)
	t.Parallel()
	storetest.Exercise(context.Background(), t, storetest.Features{ConcurrentWriters: true},
		func(t *testing.T, sources []store.Source) storetest.Harness {
			s := openFresh(t, sources)
			return storetest.Harness{
				Store: s, Demo: s, Leaser: s,
				BeginSourceInsert: func(ctx context.Context, rows []store.DemoItem) ([]store.ItemKey, func(context.Context) error, error) {
					tx, err := s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
					if err != nil {
						return nil, nil, err
					}
					keys, err := s.demoItemsInsertTx(ctx, tx, rows)
					if err != nil {
						_ = tx.Rollback()
						return nil, nil, err
					}
					return keys, func(context.Context) error { return tx.Commit() }, nil
				},
				ControlInsertNew: func(ctx context.Context, key store.ItemKey, billerID string) error {
					_, err := s.db.ExecContext(ctx, `INSERT INTO `+s.t.control+` (item_type, item_id, biller_id, status, origin)
						VALUES (@p1, @p2, @p3, N'New', N'direct')`, key.ItemType, key.ItemID, billerID)
					return err
				},
			}
		})
}

func TestCatalogConformance(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	catalogtest.Exercise(ctx, t, catalogtest.Features{}, func(t *testing.T, seed []catalog.Biller) catalog.Catalog {
		s := openFresh(t, nil)
		for _, b := range seed {
			require.NoError(t, s.BillerUpsert(ctx, b))
		}
		return s
	})
}

// TestMigrateLeavesSourceTablesAlone: migrating a database that already
// holds the applications' tables changes none of them.
func TestMigrateLeavesSourceTablesAlone(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	s := openFresh(t, storetest.Sources())
	require.NoError(t, s.DemoSchemaCreate(ctx))
	keys, err := s.DemoItemsInsert(ctx, []store.DemoItem{{ItemType: items.Payment, BillerID: "b1", AmountCents: 5}})
	require.NoError(t, err)

	tables := func() []string {
		rows, err := s.db.QueryContext(ctx, `SELECT name FROM sys.tables WHERE schema_id = SCHEMA_ID(@p1) ORDER BY name`, s.schema)
		require.NoError(t, err)
		defer rows.Close()
		var names []string
		for rows.Next() {
			var n string
			require.NoError(t, rows.Scan(&n))
			names = append(names, n)
		}
		require.NoError(t, rows.Err())
		return names
	}
	before := tables()
	require.Contains(t, before, "datapump_schema_version")
	require.NoError(t, s.Migrate(ctx))
	require.Equal(t, before, tables())
	src, err := s.ItemSource(ctx, keys[0])
	require.NoError(t, err)
	require.Equal(t, "b1", src.BillerID)
}

// TestDemoExplicitIDs: generated ids after explicit ones do not collide.
func TestDemoExplicitIDs(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	s := openFresh(t, storetest.Sources())
	require.NoError(t, s.DemoSchemaCreate(ctx))
	_, err := s.DemoItemsInsert(ctx, []store.DemoItem{
		{ItemType: items.Payment, ItemID: 1000, BillerID: "b1", AmountCents: 1},
		{ItemType: items.Paperless, ItemID: 1, BillerID: "b1", Email: "x@example.com", AccountID: 500},
	})
	require.NoError(t, err)
	keys, err := s.DemoItemsInsert(ctx, []store.DemoItem{
		{ItemType: items.Payment, BillerID: "b1", AmountCents: 2},
		{ItemType: items.Paperless, BillerID: "b1", Email: "y@example.com"},
	})
	require.NoError(t, err)
	require.Greater(t, keys[0].ItemID, int64(1000))
	require.Greater(t, keys[1].ItemID, int64(1))

	row, err := s.ItemEnrich(ctx, keys[0])
	require.NoError(t, err)
	p, err := items.MapPayment(row)
	require.NoError(t, err)
	require.Equal(t, int64(2), p.(items.PaymentPayload).AmountCents)
	row, err = s.ItemEnrich(ctx, keys[1])
	require.NoError(t, err)
	r, err := items.MapPaperless(row)
	require.NoError(t, err)
	require.Equal(t, "y@example.com", r.(items.PaperlessPayload).Email)
	require.True(t, r.(items.PaperlessPayload).Enrolled)
}

// TestSharedTableWithTypeColumn: two item types in one schema-qualified
// table, told apart by a type column.
func TestSharedTableWithTypeColumn(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	schema, dsn := freshSchema(t)
	table := schema + ".work_items"
	src := func(itemType, kind string) store.Source {
		return store.Source{
			ItemType: itemType, Table: table, KeyColumn: "ItemId", BillerColumn: "biller",
			CreatedAtColumn: "inserted", TypeColumn: "kind", TypeValue: kind,
			EnrichQuery: `SELECT ItemId AS item_id, note FROM work_items WHERE ItemId = :id AND kind = 'A'`,
		}
	}
	s, err := Open(ctx, Config{DSN: dsn, Schema: schema, Sources: []store.Source{src("alpha", "A"), src("beta", "B")}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	require.NoError(t, s.Migrate(ctx))
	_, err = s.db.ExecContext(ctx, `CREATE TABLE `+s.t.schema+`.[work_items] (
		ItemId bigint IDENTITY(1, 1) PRIMARY KEY, kind varchar(8) NOT NULL, biller varchar(32) NOT NULL,
		inserted datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(), note nvarchar(32) NOT NULL)`)
	require.NoError(t, err)

	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	// One statement per row: ids 1 to 6 in this order.
	for _, r := range []struct {
		kind, biller, note string
		inserted           time.Time
	}{
		{"A", "b1", "a1", time.Time{}}, {"B", "b1", "b1", time.Time{}}, {"A", "b1", "a2", time.Time{}},
		{"C", "b1", "other", time.Time{}}, {"A", "b2", "a3", time.Time{}}, {"B", "b1", "old", old},
	} {
		_, err = s.db.ExecContext(ctx, `INSERT INTO `+s.t.schema+`.[work_items] (kind, biller, note, inserted)
			VALUES (@p1, @p2, @p3, COALESCE(CAST(@p4 AS datetime2(3)), SYSUTCDATETIME()))`,
			mssql.VarChar(r.kind), mssql.VarChar(r.biller), r.note, timeArg(r.inserted))
		require.NoError(t, err)
	}

	counts, err := s.PendingCount(ctx, store.PendingCountParams{Billers: []store.BillerCutover{
		{BillerID: "b1", CutoverAt: old.Add(time.Hour)}, {BillerID: "b2"}, {BillerID: "b1"},
	}})
	require.NoError(t, err)
	require.Len(t, counts, 2)
	require.Equal(t, "b1", counts[0].BillerID)
	require.Equal(t, int64(3), counts[0].Pending, "kind C is no item type; the old row is before b1's cut-over; a repeated biller counts once")
	require.Equal(t, "b2", counts[1].BillerID)
	require.Equal(t, int64(1), counts[1].Pending)

	claimed, err := s.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: old.Add(time.Hour), Limit: 10, Owner: "w"})
	require.NoError(t, err)
	got := make([]store.ItemKey, len(claimed))
	for i, c := range claimed {
		got[i] = c.ItemKey
	}
	require.ElementsMatch(t, []store.ItemKey{{ItemType: "alpha", ItemID: 1}, {ItemType: "beta", ItemID: 2}, {ItemType: "alpha", ItemID: 3}}, got)

	_, err = s.ItemSource(ctx, store.ItemKey{ItemType: "beta", ItemID: 1})
	require.ErrorIs(t, err, store.ErrNotFound, "row 1 is an alpha, not a beta")
	row, err := s.ItemSource(ctx, store.ItemKey{ItemType: "alpha", ItemID: 5})
	require.NoError(t, err)
	require.Equal(t, "b2", row.BillerID)

	enriched, err := s.ItemEnrich(ctx, store.ItemKey{ItemType: "alpha", ItemID: 3})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"item_id": int64(3), "note": "a2"}, enriched)

	c, err := s.ControlClaimItem(ctx, store.ControlClaimItemParams{Key: store.ItemKey{ItemType: "alpha", ItemID: 5}, Owner: "w", Lease: time.Minute, InsertIfAbsent: true, Origin: "direct"})
	require.NoError(t, err)
	require.Equal(t, store.ClaimAcquired, c.Outcome)
	require.Equal(t, "b2", c.Control.BillerID)
	_, err = s.ControlClaimItem(ctx, store.ControlClaimItemParams{Key: store.ItemKey{ItemType: "beta", ItemID: 4}, Owner: "w", Lease: time.Minute, InsertIfAbsent: true})
	require.ErrorIs(t, err, store.ErrNotFound, "row 4 is of kind C")
}
