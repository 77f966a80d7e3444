package sqlserver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	mssql "github.com/microsoft/go-mssqldb"
	"github.com/microsoft/go-mssqldb/azuread"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/storetest"
)

func TestConnectorDriverForFedAuth(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dsn, driver string
	}{
		{"sqlserver://sa:pw@127.0.0.1:1433?database=shard1", DriverSQLAuth},
		{"server=127.0.0.1;user id=sa;password=pw;database=shard1", DriverSQLAuth},
		{"sqlserver://shard1.database.windows.net?database=billers&fedauth=ActiveDirectoryWorkloadIdentity", azuread.DriverName},
		{"sqlserver://shard1.database.windows.net?database=billers&fedauth=ActiveDirectoryDefault", azuread.DriverName},
		{"sqlserver://client-id@shard1.database.windows.net?database=billers&fedauth=ActiveDirectoryWorkloadIdentity", azuread.DriverName},
		{"server=shard1.database.windows.net;database=billers;fedauth=ActiveDirectoryDefault", azuread.DriverName},
		{"odbc:server=shard1.database.windows.net;database=billers;fedauth=ActiveDirectoryWorkloadIdentity", azuread.DriverName},
		{"sqlserver://shard1.database.windows.net?database=billers&fedauth=ActiveDirectoryManagedIdentity", azuread.DriverName},
	} {
		driver, c, err := newConnector(tc.dsn)
		require.NoError(t, err, tc.dsn)
		require.NotNil(t, c, tc.dsn)
		require.Equal(t, tc.driver, driver, tc.dsn)
	}
}

func TestConnectorRefusesUnknownFedAuth(t *testing.T) {
	t.Parallel()
	_, _, err := newConnector("sqlserver://h?database=x&fedauth=ActiveDirectoryBogus")
	require.ErrorContains(t, err, "fedauth")
	require.ErrorContains(t, err, "ActiveDirectoryWorkloadIdentity")

	// The driver matches the value case-insensitively when it parses but
	// exactly when it picks a credential: a different spelling is refused.
	_, _, err = newConnector("SQLServer://h?database=x")
	require.ErrorContains(t, err, `scheme "SQLServer" is not sqlserver`, "the driver would read it as an ADO string")
	_, _, err = newConnector("postgres://h/x")
	require.ErrorContains(t, err, `scheme "postgres" is not sqlserver`)

	_, _, err = newConnector("sqlserver://h?database=x&fedauth=activedirectoryworkloadidentity")
	require.ErrorContains(t, err, "write \"activedirectoryworkloadidentity\" as ActiveDirectoryWorkloadIdentity")
}

func TestOpenMalformedDSNHidesPassword(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-Pa55"
	for _, dsn := range []string{
		"sqlserver://sa:" + secret + "@127.0.0.1:notaport?database=x",
		"sqlserver://sa:" + secret + "@127.0.0.1?database=x&database=y",
		"sqlserver://sa:" + secret + "@127.0.0.1?database=x&log=notanumber",
		"sqlserver://sa:" + secret + "@127.0.0.1?database=x&fedauth=ActiveDirectoryBogus",
		"sqlserver://sa:" + secret + "@127.0.0.1?database=x&fedauth=activedirectorydefault",
		"mysql://sa:" + secret + "@127.0.0.1/x",
		"server=127.0.0.1;user id=sa;password=" + secret + ";port=notaport",
		"server=127.0.0.1;user id=sa;password=\"" + secret + "\";port=notaport",
		"server=127.0.0.1;user id=sa;pwd=" + secret + ";packet size=huge",
		"odbc:server=127.0.0.1;uid=sa;pwd={" + secret + "};port=notaport",
		"server=127.0.0.1;user id=client-id;password=" + secret + ";fedauth=ActiveDirectoryServicePrincipal;port=x",
		// Well formed, but nothing listens: the ping fails.
		"sqlserver://sa:" + secret + "@127.0.0.1:1?database=x&dial+timeout=2",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := Open(ctx, Config{DSN: dsn, Sources: storetest.Sources()})
		cancel()
		require.Error(t, err, dsn)
		require.NotContains(t, err.Error(), secret, "error for %s", dsn)
		require.Contains(t, err.Error(), "open sqlserver", dsn)
	}
}

func TestRedactorRemovesEverySecret(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ dsn, secret string }{
		{"sqlserver://sa:p%40ss-word@host?database=x", "p@ss-word"},
		{"sqlserver://sa:p%40ss-word@host?database=x", "p%40ss-word"},
		{"server=host;user id=sa;password=plain-secret;database=x", "plain-secret"},
		{"server=host;user id=sa;Password = \"quoted;secret\";database=x", "quoted;secret"},
		{"odbc:server=host;uid=sa;pwd={braced;secret};database=x", "braced;secret"},
		{"server=host;user id=app;password=client-secret;fedauth=ActiveDirectoryServicePrincipal", "client-secret"},
		{"sqlserver://host?database=x&fedauth=ActiveDirectoryClientAssertion&clientassertion=eyJhbGciOi", "eyJhbGciOi"},
	} {
		err := newRedactor(tc.dsn)(fmt.Errorf("wrapped: %w", errors.New("login with "+tc.secret+" failed")))
		require.NotContains(t, err.Error(), tc.secret, tc.dsn)
		require.Contains(t, err.Error(), "xxxxx", tc.dsn)
	}
	cause := errors.New("cause")
	require.ErrorIs(t, newRedactor("sqlserver://sa:pw@h")(fmt.Errorf("x: %w", cause)), cause, "the cause survives")
}

func TestOpenRefusesBadConfigNamingTheField(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const dsn = "sqlserver://sa:pw@127.0.0.1:1?database=x"

	_, err := Open(ctx, Config{})
	require.ErrorContains(t, err, "dsn: required")
	for _, schema := range []string{"bad-schema", "a.b", "x]; DROP TABLE y; --", strings.Repeat("s", 129)} {
		_, err = Open(ctx, Config{DSN: dsn, Schema: schema})
		require.ErrorContains(t, err, "schema:", "schema %q", schema)
	}
	_, err = Open(ctx, Config{DSN: dsn, MaxConns: -1})
	require.ErrorContains(t, err, "max_conns")

	for field, mutate := range map[string]func(*store.Source){
		"table":             func(s *store.Source) { s.Table = "payments; DROP TABLE accounts" },
		"key_column":        func(s *store.Source) { s.KeyColumn = "id]" },
		"biller_column":     func(s *store.Source) { s.BillerColumn = "biller id" },
		"created_at_column": func(s *store.Source) { s.CreatedAtColumn = "" },
		"type_column":       func(s *store.Source) { s.TypeColumn = "a.b.c" },
		"enrich_query":      func(s *store.Source) { s.EnrichQuery = "SELECT 1" },
		"item_type":         func(s *store.Source) { s.ItemType = strings.Repeat("x", 65) },
	} {
		sources := storetest.Sources()
		mutate(&sources[1])
		_, err := Open(ctx, Config{DSN: dsn, Sources: sources})
		require.ErrorContains(t, err, field+":", "field %s", field)
		require.ErrorContains(t, err, "sources[1]", "field %s", field)
		require.ErrorContains(t, err, "open sqlserver", "field %s", field)
	}
	dup := append(storetest.Sources(), storetest.Sources()[0])
	_, err = Open(ctx, Config{DSN: dsn, Sources: dup})
	require.ErrorContains(t, err, "item_type: defined twice")
}

func TestCompileSourcesQuotesAndQualifies(t *testing.T) {
	t.Parallel()
	sources := []store.Source{
		{ItemType: "b", Table: "payments", KeyColumn: "id", BillerColumn: "biller_id", CreatedAtColumn: "created_at", EnrichQuery: "SELECT x FROM payments WHERE id = :id"},
		{ItemType: "a", Table: "app.WorkItems", KeyColumn: "ItemId", BillerColumn: "Biller", CreatedAtColumn: "Inserted",
			TypeColumn: "Kind", TypeValue: "A", EnrichQuery: "SELECT x FROM app.WorkItems WHERE ItemId=:id AND y::int = 1"},
	}
	byType, order, err := compileSources("billing", sources)
	require.NoError(t, err)
	require.Equal(t, "a", order[0].ItemType, "ordered by item type")
	require.Equal(t, "[billing].[payments]", byType["b"].table, "an unqualified table is taken from the schema")
	require.Equal(t, "[app].[WorkItems]", byType["a"].table)
	require.Equal(t, "[ItemId]", byType["a"].key)
	require.Equal(t, "[Kind]", byType["a"].typeColumn)
	require.Equal(t, "SELECT x FROM payments WHERE id = @p1", byType["b"].enrich)
	require.Equal(t, "SELECT x FROM app.WorkItems WHERE ItemId=@p1 AND y::int = 1", byType["a"].enrich, "a :: cast is not the placeholder")
}

func TestMillis(t *testing.T) {
	t.Parallel()
	ms, err := millis("lease", 1500*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, int32(1500), ms)
	ms, err = millis("lease", 0)
	require.NoError(t, err)
	require.Zero(t, ms)
	_, err = millis("retry_in", -time.Second)
	require.ErrorContains(t, err, "retry_in")
	_, err = millis("older_than", 25*24*time.Hour)
	require.ErrorContains(t, err, "older_than")
	ms, err = millis("ttl", 24*24*time.Hour)
	require.NoError(t, err)
	require.Equal(t, int32(24*24*3600*1000), ms)
}

func TestSQLErrorNumbers(t *testing.T) {
	t.Parallel()
	wrap := func(n int32) error { return fmt.Errorf("claim: %w", mssql.Error{Number: n, Message: "x"}) }
	require.True(t, isDeadlock(wrap(errDeadlock)))
	require.False(t, isDeadlock(wrap(errDuplicateKey)))
	require.True(t, isDuplicateKey(wrap(errDuplicateKey)))
	require.True(t, isDuplicateKey(wrap(errDuplicateRow)))
	require.False(t, isDuplicateKey(errors.New("plain")))
	require.Zero(t, sqlErrorNumber(nil))
}

func TestPlainValue(t *testing.T) {
	t.Parallel()
	require.Equal(t, int64(1234), plainValue("DECIMAL", []byte("1234")))
	require.Equal(t, int64(12), plainValue("MONEY", []byte("12.0000")))
	require.Equal(t, 12.5, plainValue("DECIMAL", []byte("12.50")))
	require.Equal(t, int64(-3), plainValue("DECIMAL", []byte("-3")))
	require.Equal(t, []byte{1, 2}, plainValue("VARBINARY", []byte{1, 2}))
	u := mssql.UniqueIdentifier{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10}
	wire, err := u.Value()
	require.NoError(t, err)
	require.Equal(t, u.String(), plainValue("UNIQUEIDENTIFIER", wire))
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	require.Equal(t, at.UTC(), plainValue("DATETIME2", at))
	require.Equal(t, true, plainValue("BIT", true))
}

func TestJSONBatches(t *testing.T) {
	t.Parallel()
	j, err := fencedJSON([]store.Fenced{
		{ItemKey: store.ItemKey{ItemType: "payment", ItemID: 10}, Version: 2},
		{ItemKey: store.ItemKey{ItemType: "paperless", ItemID: 3}, Version: 1},
		{ItemKey: store.ItemKey{ItemType: "payment", ItemID: 9}, Version: 4},
	})
	require.NoError(t, err)
	require.Equal(t, `[{"t":"paperless","i":3,"v":1},{"t":"payment","i":9,"v":4},{"t":"payment","i":10,"v":2}]`, j, "sorted by key: one lock order")

	b, err := billersJSON([]store.BillerCutover{
		{BillerID: "b1", CutoverAt: time.Date(2026, 5, 6, 7, 8, 9, 123_000_000, time.FixedZone("x", 2*3600))},
		{BillerID: "b2"},
		{BillerID: "b1"},
	})
	require.NoError(t, err)
	require.Equal(t, `[{"b":"b1","c":"2026-05-06T05:08:09.1230000"},{"b":"b2","c":"0001-01-01T00:00:00.0000000"}]`, b,
		"UTC, ISO 8601 without a zone; a biller once, its first cut-over; no cut-over is the year 1")
}
