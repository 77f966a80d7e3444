package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/catalog/catalogtest"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/storetest"
)

const dsnVar = "DATAPUMP_TEST_POSTGRES_DSN"

func testDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv(dsnVar)
	if dsn == "" {
		t.Skip("set " + dsnVar + " to run")
	}
	return dsn
}

// openFresh opens a store on a new schema t_<random>, migrated, and drops
// the schema when the test ends.
func openFresh(t *testing.T, sources []store.Source) *Store {
	t.Helper()
	dsn := testDSN(t)
	ctx := context.Background()
	var b [6]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	schema := "t_" + hex.EncodeToString(b[:])

	s, err := Open(ctx, Config{DSN: dsn, Schema: schema, MaxConns: 10, Sources: sources})
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := s.pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
		s.Close()
		require.NoError(t, err, "drop schema %s", schema)
	})
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
					tx, err := s.pool.Begin(ctx)
					if err != nil {
						return nil, nil, err
					}
					keys, err := demoItemsInsertTx(ctx, tx, rows)
					if err != nil {
						_ = tx.Rollback(ctx)
						return nil, nil, err
					}
					return keys, tx.Commit, nil
				},
				ControlInsertNew: func(ctx context.Context, key store.ItemKey, billerID string) error {
					_, err := s.pool.Exec(ctx, `
						INSERT INTO datapump_control (item_type, item_id, biller_id, status, origin)
						VALUES ($1, $2, $3, 'New', 'direct')`, key.ItemType, key.ItemID, billerID)
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

func TestOpenErrorHidesPassword(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-Pa55"
	for _, dsn := range []string{
		"postgres://postgres:" + secret + "@127.0.0.1:1/test?sslmode=disable&connect_timeout=2",
		"postgres://postgres:" + secret + "@127.0.0.1:notaport/test",
		"host=127.0.0.1 port=1 user=postgres password=" + secret + " dbname=test sslmode=disable connect_timeout=2",
		"host=127.0.0.1 port=1 user=postgres password='" + secret + "' dbname=test sslmode=disable connect_timeout=2",
		"host=127.0.0.1 port=x user=postgres password=" + secret,
	} {
		_, err := Open(context.Background(), Config{DSN: dsn, Sources: storetest.Sources()})
		require.Error(t, err, dsn)
		require.NotContains(t, err.Error(), secret, "error for %s", dsn)
		require.Contains(t, err.Error(), "open postgres")
	}
}

func TestOpenRefusesBadIdentifiers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const dsn = "postgres://postgres@127.0.0.1:1/test?sslmode=disable"

	_, err := Open(ctx, Config{DSN: dsn, Schema: "bad-schema"})
	require.ErrorContains(t, err, "schema")
	_, err = Open(ctx, Config{DSN: dsn, Schema: "a.b"})
	require.ErrorContains(t, err, "schema")

	for field, mutate := range map[string]func(*store.Source){
		"table":             func(s *store.Source) { s.Table = "payments; DROP TABLE accounts" },
		"key_column":        func(s *store.Source) { s.KeyColumn = `id"` },
		"biller_column":     func(s *store.Source) { s.BillerColumn = "biller id" },
		"created_at_column": func(s *store.Source) { s.CreatedAtColumn = "" },
		"type_column":       func(s *store.Source) { s.TypeColumn = "a.b.c" },
		"enrich_query":      func(s *store.Source) { s.EnrichQuery = "SELECT 1" },
	} {
		sources := storetest.Sources()
		mutate(&sources[1])
		_, err := Open(ctx, Config{DSN: dsn, Sources: sources})
		require.ErrorContains(t, err, field)
		require.ErrorContains(t, err, "sources[1] ("+sources[1].ItemType+")")
	}

	dup := append(storetest.Sources(), storetest.Sources()[0])
	_, err = Open(ctx, Config{DSN: dsn, Sources: dup})
	require.ErrorContains(t, err, "defined twice")
}

// TestMigrateLeavesSourceTablesAlone: migrating a database that already
// holds the applications' tables changes none of them.
func TestMigrateLeavesSourceTablesAlone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openFresh(t, storetest.Sources())
	require.NoError(t, s.DemoSchemaCreate(ctx))
	keys, err := s.DemoItemsInsert(ctx, []store.DemoItem{{ItemType: items.Payment, BillerID: "b1", AmountCents: 5}})
	require.NoError(t, err)

	tables := func() []string {
		rows, err := s.pool.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name`, s.schema)
		require.NoError(t, err)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return names
	}
	before := tables()
	require.NoError(t, s.Migrate(ctx))
	require.Equal(t, before, tables())
	src, err := s.ItemSource(ctx, keys[0])
	require.NoError(t, err)
	require.Equal(t, "b1", src.BillerID)
}

// TestDemoExplicitIDsAdvanceSequences: a generated id after explicit ones
// does not collide.
func TestDemoExplicitIDsAdvanceSequences(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openFresh(t, storetest.Sources())
	require.NoError(t, s.DemoSchemaCreate(ctx))
	_, err := s.DemoItemsInsert(ctx, []store.DemoItem{
		{ItemType: items.Payment, ItemID: 1000, BillerID: "b1", AmountCents: 1},
		{ItemType: items.Paperless, ItemID: 1, BillerID: "b1", Email: "x@example.com"},
	})
	require.NoError(t, err)
	keys, err := s.DemoItemsInsert(ctx, []store.DemoItem{
		{ItemType: items.Payment, BillerID: "b1", AmountCents: 2},
		{ItemType: items.Paperless, BillerID: "b1", Email: "y@example.com"},
	})
	require.NoError(t, err)
	require.Greater(t, keys[0].ItemID, int64(1000))
	require.Greater(t, keys[1].ItemID, int64(1))
	_, err = s.DemoItemsInsert(ctx, []store.DemoItem{{ItemType: items.Payment, ItemID: 10, BillerID: "b1", AmountCents: 3}})
	require.NoError(t, err)
	later, err := s.DemoItemsInsert(ctx, []store.DemoItem{{ItemType: items.Payment, BillerID: "b1", AmountCents: 4}})
	require.NoError(t, err)
	require.Greater(t, later[0].ItemID, keys[0].ItemID, "a lower explicit id does not move the sequence back")

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
	t.Parallel()
	ctx := context.Background()
	// The store is opened twice: once to learn the schema, once with
	// sources naming their table schema-qualified in it.
	base := openFresh(t, nil)
	table := base.schema + ".work_items"
	_, err := base.pool.Exec(ctx, `CREATE TABLE work_items (
		"ItemId" bigserial PRIMARY KEY, kind text NOT NULL, biller text NOT NULL,
		inserted timestamptz NOT NULL DEFAULT clock_timestamp(), note text NOT NULL)`)
	require.NoError(t, err)
	src := func(itemType, kind string) store.Source {
		return store.Source{
			ItemType: itemType, Table: table, KeyColumn: "ItemId", BillerColumn: "biller",
			CreatedAtColumn: "inserted", TypeColumn: "kind", TypeValue: kind,
			EnrichQuery: `SELECT "ItemId" AS item_id, note FROM work_items WHERE "ItemId" = :id AND kind = 'A'`,
		}
	}
	s, err := Open(ctx, Config{DSN: testDSN(t), Schema: base.schema, Sources: []store.Source{src("alpha", "A"), src("beta", "B")}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })

	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	_, err = s.pool.Exec(ctx, `INSERT INTO work_items (kind, biller, note, inserted) VALUES
		('A', 'b1', 'a1', DEFAULT), ('B', 'b1', 'b1', DEFAULT), ('A', 'b1', 'a2', DEFAULT),
		('C', 'b1', 'other', DEFAULT), ('A', 'b2', 'a3', DEFAULT), ('B', 'b1', 'old', $1)`, old)
	require.NoError(t, err)

	counts, err := s.PendingCount(ctx, store.PendingCountParams{Billers: []store.BillerCutover{
		{BillerID: "b1", CutoverAt: old.Add(time.Hour)}, {BillerID: "b2"}, {BillerID: "b1"},
	}})
	require.NoError(t, err)
	inserted := map[int64]time.Time{}
	rows, err := s.pool.Query(ctx, `SELECT "ItemId", inserted FROM work_items`)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		var at time.Time
		require.NoError(t, rows.Scan(&id, &at))
		inserted[id] = at.UTC()
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []store.BillerPending{
		{BillerID: "b1", Pending: 3, OldestCreatedAt: inserted[1]},
		{BillerID: "b2", Pending: 1, OldestCreatedAt: inserted[5]},
	}, counts, "kind C is no item type; the old row is before b1's cut-over; a repeated biller counts once")

	listed, err := s.PendingList(ctx, store.PendingListParams{Billers: []store.BillerCutover{
		{BillerID: "b1", CutoverAt: old.Add(time.Hour)}, {BillerID: "b1"},
	}, Limit: 10})
	require.NoError(t, err)
	want := []store.SourceRow{
		{ItemKey: store.ItemKey{ItemType: "alpha", ItemID: 1}, BillerID: "b1", CreatedAt: inserted[1]},
		{ItemKey: store.ItemKey{ItemType: "beta", ItemID: 2}, BillerID: "b1", CreatedAt: inserted[2]},
		{ItemKey: store.ItemKey{ItemType: "alpha", ItemID: 3}, BillerID: "b1", CreatedAt: inserted[3]},
	}
	require.ElementsMatch(t, want, listed, "the pending list tells the item types of one table apart; the first cut-over of a repeated biller holds")

	claimed, err := s.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: old.Add(time.Hour), Limit: 10, Owner: "w"})
	require.NoError(t, err)
	require.Equal(t, []store.ItemKey{{ItemType: "alpha", ItemID: 1}, {ItemType: "beta", ItemID: 2}, {ItemType: "alpha", ItemID: 3}}, keysOf(claimed))

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

func keysOf(cs []store.Claimed) []store.ItemKey {
	out := make([]store.ItemKey, len(cs))
	for i, c := range cs {
		out[i] = c.ItemKey
	}
	return out
}

// TestItemEnrichBatchKeepsAFailureWithItsItem: one item whose enrichment
// query fails (not merely finds no row) would abort the pipelined batch
// after it; the batch is read again item by item, so only that item gets
// the error.
func TestItemEnrichBatchKeepsAFailureWithItsItem(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := openFresh(t, nil)
	_, err := base.pool.Exec(ctx, `CREATE TABLE readings (id bigint PRIMARY KEY, biller text NOT NULL, at timestamptz NOT NULL DEFAULT now(), divisor int NOT NULL)`)
	require.NoError(t, err)
	s, err := Open(ctx, Config{DSN: testDSN(t), Schema: base.schema, Sources: []store.Source{{
		ItemType: "reading", Table: "readings", KeyColumn: "id", BillerColumn: "biller", CreatedAtColumn: "at",
		EnrichQuery: `SELECT id AS item_id, 100 / divisor AS share FROM readings WHERE id = :id`,
	}}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	_, err = s.pool.Exec(ctx, `INSERT INTO readings (id, biller, divisor) VALUES (1, 'b1', 4), (2, 'b1', 0), (3, 'b1', 5)`)
	require.NoError(t, err)

	keys := []store.ItemKey{{ItemType: "reading", ItemID: 1}, {ItemType: "reading", ItemID: 2}, {ItemType: "reading", ItemID: 3}, {ItemType: "reading", ItemID: 4}}
	got, err := s.ItemEnrichBatch(ctx, keys)
	require.NoError(t, err)
	require.Len(t, got, 4)
	require.NoError(t, got[0].Err)
	require.EqualValues(t, 25, got[0].Row["share"])
	require.ErrorContains(t, got[1].Err, "division by zero", "the failing item keeps its own error")
	require.NoError(t, got[2].Err, "the item after it is read")
	require.EqualValues(t, 20, got[2].Row["share"])
	require.ErrorIs(t, got[3].Err, store.ErrRelatedMissing)
}

// TestItemEnrichSetReadsWhatItemEnrichReads: the one-statement batch read
// (which ItemEnrichBatch falls back from silently) returns, for each id,
// exactly the row ItemEnrich returns: the query's first row in its own
// order, the same columns, nothing for an id without one, and the same row
// again for an id asked twice.
func TestItemEnrichSetReadsWhatItemEnrichReads(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := openFresh(t, nil)
	_, err := base.pool.Exec(ctx, `CREATE TABLE meters (id bigint PRIMARY KEY, biller text NOT NULL, at timestamptz NOT NULL DEFAULT now());
		CREATE TABLE meter_reads (meter_id bigint NOT NULL, seq int NOT NULL, kwh numeric NOT NULL)`)
	require.NoError(t, err)
	s, err := Open(ctx, Config{DSN: testDSN(t), Schema: base.schema, Sources: []store.Source{{
		ItemType: "meter", Table: "meters", KeyColumn: "id", BillerColumn: "biller", CreatedAtColumn: "at",
		EnrichQuery: `SELECT m.id AS item_id, m.biller, r.seq, r.kwh FROM meters m JOIN meter_reads r ON r.meter_id = m.id WHERE m.id = :id ORDER BY r.seq DESC`,
	}}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	_, err = s.pool.Exec(ctx, `INSERT INTO meters (id, biller) VALUES (1, 'b1'), (2, 'b2'), (3, 'b1');
		INSERT INTO meter_reads VALUES (1, 1, 10.5), (1, 3, 12), (1, 2, 11), (2, 7, 0.25)`)
	require.NoError(t, err)

	ids := []int64{3, 1, 99, 2, 1}
	got, err := s.enrichSetOf(ctx, s.sources["meter"], ids)
	require.NoError(t, err)
	require.Len(t, got, len(ids))
	for i, id := range ids {
		want, wantErr := s.ItemEnrich(ctx, store.ItemKey{ItemType: "meter", ItemID: id})
		if wantErr != nil {
			require.ErrorIs(t, wantErr, store.ErrRelatedMissing)
			require.Nil(t, got[i], "id %d has no row", id)
			continue
		}
		require.Equal(t, want, got[i], "id %d", id)
	}
	require.EqualValues(t, 3, got[1]["seq"], "the query's own order picks the first row")
	require.Equal(t, got[1], got[4])
	require.Equal(t, 0.25, got[3]["kwh"])
}
