// Package sqlserver is the SQL Server adapter of the store port (and of the
// catalog port, whose billers live in the same database), on
// github.com/microsoft/go-mssqldb. A DSN with fedauth=ActiveDirectory… (for
// example ActiveDirectoryWorkloadIdentity on AKS, or ActiveDirectoryDefault)
// connects with Entra ID through the driver's azuread package; any other DSN
// uses SQL authentication.
//
// Requirements: SQL Server 2016 or later, or Azure SQL, with the database at
// compatibility level 130 or higher (OPENJSON carries the batches).
//
// Time: every time the adapter writes or compares comes from the database
// clock, SYSUTCDATETIME(), read once per statement into @now, a
// datetime2(3): the control tables keep milliseconds, and comparing stored
// values with the same rounded clock keeps "due now" due now. Source
// created-at columns should be datetime2 (or datetime) holding UTC; the
// cut-over is compared as a UTC datetime2.
//
// Concurrency: claims take rows with (ROWLOCK, UPDLOCK, READPAST) through
// the control table's primary key or its filtered indexes, so a claimer
// locks only the rows it takes and skips the ones another holds; an
// insert-if-absent checks existence WITH (UPDLOCK, HOLDLOCK), so two
// claimers of one absent item are serialised on its key range instead of
// both inserting. MERGE is not used. Reads of the applications' tables use
// (READCOMMITTEDLOCK, READPAST): a row an application is still inserting is
// skipped, never waited for and never read dirty, whether or not the
// database has READ_COMMITTED_SNAPSHOT on. Deadlock victims (1205) are
// retried. Each statement's review against SQL Server's documented locking
// semantics sits next to it; statements.golden pins their text.
//
// Data-changing statements return rows with OUTPUT … INTO a table
// variable, never a bare OUTPUT, which SQL Server refuses on a table with an
// enabled trigger (datapump_control has none, and a DBA adding one for
// auditing must not break the pump).
//
// Identifiers come from store.Source after Validate and are quoted with
// [brackets]; an unqualified source table is taken from the configured
// schema. Enrichment queries run as written, with :id bound to @p1: their
// unqualified names resolve through the connecting user's default schema, as
// SQL Server does. Every value is a query parameter. Biller ids and type
// values are compared with the applications' columns as varchar parameters,
// so that an index on a varchar column is seekable (an nvarchar parameter
// would convert the column); they are expected to be ASCII.
//
// Migrations (pressly/goose, embedded, under an application lock) create
// only the pump's own tables: datapump_control, datapump_lease,
// datapump_biller, datapump_watermark and goose's datapump_schema_version,
// in the configured schema. Source tables are read, never changed, except by
// the demo source (DemoSchemaCreate, DemoItemsInsert), which stands in for
// the applications that own them.
package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	mssql "github.com/microsoft/go-mssqldb"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/store"
)

// DefaultSchema is the schema used when Config.Schema is empty.
const DefaultSchema = "dbo"

// defaultMaxConns caps the pool when Config.MaxConns is zero.
const defaultMaxConns = 10

// maxItemTypeLen is the width of datapump_control.item_type.
const maxItemTypeLen = 64

// sessionInit runs on every new connection and every reuse of a pooled one
// (the driver resets the session first). XACT_ABORT makes any error roll the
// whole transaction back; the SET options are the ones filtered indexes
// require of every session that writes the indexed table (a session with
// different ones fails with error 1934) — go-mssqldb sets none of them
// itself, so they are not left to the server's login defaults; the isolation
// level is set because a session reset does not promise to restore it. The
// price is one short round trip each time a pooled connection is reused.
const sessionInit = `SET XACT_ABORT ON; SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; ` +
	`SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; SET NUMERIC_ROUNDABORT OFF; ` +
	`SET TRANSACTION ISOLATION LEVEL READ COMMITTED;`

// Config says how to reach the database and where the item types live.
type Config struct {
	// DSN is a go-mssqldb connection string: sqlserver://user:pass@host?database=x
	// for SQL authentication, or with fedauth=ActiveDirectoryWorkloadIdentity
	// (or another ActiveDirectory… method) for Entra ID. ADO
	// ("server=…;user id=…") and ODBC ("odbc:…") forms work too.
	DSN string
	// Schema holds the pump's tables and unqualified source tables; empty
	// means dbo. It must be a plain identifier; Migrate creates it if missing.
	Schema string
	// MaxConns caps the pool; zero means 10.
	MaxConns int
	// Sources maps each item type onto its table.
	Sources []store.Source
	// Logger receives the adapter's logs; nil discards them.
	Logger *slog.Logger
}

// schema returns the configured schema or DefaultSchema.
func (c Config) schema() string {
	if c.Schema == "" {
		return DefaultSchema
	}
	return c.Schema
}

// Validate checks the configuration without connecting and names the bad
// field. It never repeats the DSN, which may hold a password.
func (c Config) Validate() error {
	if strings.TrimSpace(c.DSN) == "" {
		return errors.New("dsn: required")
	}
	if c.Schema != "" && (!store.ValidIdentifier(c.Schema) || strings.Contains(c.Schema, ".")) {
		return fmt.Errorf("schema: %q is not a valid SQL identifier", c.Schema)
	}
	if c.MaxConns < 0 {
		return fmt.Errorf("max_conns: %d must not be negative", c.MaxConns)
	}
	_, _, err := compileSources(c.schema(), c.Sources)
	return err
}

// Store is one SQL Server database: a shard's items and control records,
// the publisher's lease, the demo source tables and the biller catalog.
type Store struct {
	db      *sql.DB
	log     *slog.Logger
	driver  string
	schema  string // unquoted
	t       tables
	sources map[string]*source
	order   []*source // by item type
}

var (
	_ store.Store      = (*Store)(nil)
	_ store.Leaser     = (*Store)(nil)
	_ store.DemoSource = (*Store)(nil)
	_ catalog.Catalog  = (*Store)(nil)
)

// tables are the pump's and the demo's table names, schema-qualified and quoted.
type tables struct {
	schema, control, lease, biller, watermark, version string
	accounts, payments, paperless                      string
}

func newTables(schema string) tables {
	q := func(name string) string { return quoteIdent(schema) + "." + quoteIdent(name) }
	return tables{
		schema:    quoteIdent(schema),
		control:   q("datapump_control"),
		lease:     q("datapump_lease"),
		biller:    q("datapump_biller"),
		watermark: q("datapump_watermark"),
		version:   q(versionTable),
		accounts:  q("accounts"),
		payments:  q("payments"),
		paperless: q("paperless_registrations"),
	}
}

// newStore builds a Store around db; Open and the tests without a server
// use it.
func newStore(db *sql.DB, cfg Config, driver string) (*Store, error) {
	sources, order, err := compileSources(cfg.schema(), cfg.Sources)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{db: db, log: log, driver: driver, schema: cfg.schema(), t: newTables(cfg.schema()), sources: sources, order: order}, nil
}

// Open validates cfg, connects and pings the database. It does not migrate.
// Errors never contain the DSN's password.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open sqlserver: %w", err)
	}
	redact := newRedactor(cfg.DSN)
	driver, connector, err := newConnector(cfg.DSN)
	if err != nil {
		return nil, redact(fmt.Errorf("open sqlserver: %w", err))
	}
	connector.SessionInitSQL = sessionInit
	db := sql.OpenDB(connector)
	maxConns := cfg.MaxConns
	if maxConns == 0 {
		maxConns = defaultMaxConns
	}
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s, err := newStore(db, cfg, driver)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open sqlserver: %w", err)
	}
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, redact(fmt.Errorf("open sqlserver: ping: %w", err))
	}
	s.log.Debug("sqlserver store open", "driver", driver, "schema", s.schema)
	return s, nil
}

// Ping checks the database is reachable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlserver: %w", err)
	}
	return nil
}

// Close releases the connections.
func (s *Store) Close() error {
	return s.db.Close()
}

// nowSQL reads the database clock.
const nowSQL = `SELECT SYSUTCDATETIME()`

// Now reads the database clock (UTC, 100 ns precision).
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var t time.Time
	if err := s.db.QueryRowContext(ctx, nowSQL).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("read database clock: %w", err)
	}
	return t.UTC(), nil
}

// quoteIdent quotes one validated identifier part. Validated identifiers
// hold only letters, digits and underscores, so no ] needs doubling.
func quoteIdent(name string) string { return "[" + name + "]" }

// source is a validated store.Source with its identifiers quoted.
type source struct {
	store.Source
	table, key, biller, createdAt, typeColumn string
	// enrich is the enrichment query with :id bound to @p1.
	enrich string
}

// compileSources validates the mappings and quotes their identifiers; an
// unqualified table is taken from schema. The result is ordered by item type.
func compileSources(schema string, in []store.Source) (map[string]*source, []*source, error) {
	out := make(map[string]*source, len(in))
	var order []*source
	for i, src := range in {
		where := fmt.Sprintf("sources[%d]", i)
		if src.ItemType != "" {
			where = fmt.Sprintf("sources[%d] (%s)", i, src.ItemType)
		}
		if err := src.Validate(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(src.ItemType) > maxItemTypeLen {
			return nil, nil, fmt.Errorf("%s: item_type: longer than %d characters", where, maxItemTypeLen)
		}
		if _, dup := out[src.ItemType]; dup {
			return nil, nil, fmt.Errorf("%s: item_type: defined twice", where)
		}
		parts := strings.Split(src.Table, ".")
		if len(parts) == 1 {
			parts = []string{schema, parts[0]}
		}
		for j, p := range parts {
			parts[j] = quoteIdent(p)
		}
		c := &source{
			Source:    src,
			table:     strings.Join(parts, "."),
			key:       quoteIdent(src.KeyColumn),
			biller:    quoteIdent(src.BillerColumn),
			createdAt: quoteIdent(src.CreatedAtColumn),
			enrich:    store.BindEnrichQuery(src.EnrichQuery, "@p1"),
		}
		if src.TypeColumn != "" {
			c.typeColumn = quoteIdent(src.TypeColumn)
		}
		out[src.ItemType] = c
		order = append(order, c)
	}
	slices.SortFunc(order, func(a, b *source) int { return strings.Compare(a.ItemType, b.ItemType) })
	return out, order, nil
}

func (s *Store) source(itemType string) (*source, error) {
	src, ok := s.sources[itemType]
	if !ok {
		return nil, fmt.Errorf("%w: %q", store.ErrUnknownItemType, itemType)
	}
	return src, nil
}

// typeFilter restricts a shared table to the source's item type (alias
// s), binding the type value as a varchar parameter; "" for a table of its own.
func (src *source) typeFilter(p *params, alias string) string {
	if src.typeColumn == "" {
		return ""
	}
	return fmt.Sprintf(" AND %s.%s = %s", alias, src.typeColumn, p.add(mssql.VarChar(src.TypeValue)))
}

// params numbers a statement's parameters the way go-mssqldb names
// positional arguments (@p1, @p2, …), so text and arguments cannot drift.
type params []any

// add appends v and returns its placeholder.
func (p *params) add(v any) string {
	*p = append(*p, v)
	return "@p" + strconv.Itoa(len(*p))
}

// varchar passes a biller id or type value as varchar: compared with an
// application's varchar column it keeps the column's index seekable, and
// compared with an nvarchar column it is the side that converts.
func varchar(s string) any { return mssql.VarChar(s) }

// timeArg passes t in UTC (the driver sends a time.Time as datetimeoffset;
// SQL casts it to datetime2, which keeps the wall clock of offset +00:00),
// or a typed NULL for the zero time.
func timeArg(t time.Time) any {
	if t.IsZero() {
		return sql.NullTime{}
	}
	return t.UTC()
}

// cutoverArg passes a cut-over in UTC; the zero time is 0001-01-01, before
// every created-at, so a zero cut-over means none.
func cutoverArg(t time.Time) any { return t.UTC() }

// jsonTimeLayout is how times travel inside JSON for OPENJSON … datetime2(7):
// ISO 8601 without a zone, which datetime2 reads regardless of language
// and DATEFORMAT settings.
const jsonTimeLayout = "2006-01-02T15:04:05.0000000"

// millis renders a duration as the int milliseconds DATEADD takes. DATEADD's
// number is an int, so a duration must stay under about 24.8 days.
func millis(field string, d time.Duration) (int32, error) {
	if d < 0 {
		return 0, fmt.Errorf("%s: %s must not be negative", field, d)
	}
	ms := d.Milliseconds()
	if ms > int64(^uint32(0)>>1) {
		return 0, fmt.Errorf("%s: %s is longer than SQL Server's DATEADD takes in milliseconds (24 days)", field, d)
	}
	return int32(ms), nil
}

// limitOr turns a non-positive limit into def.
func limitOr(n, def int) int64 {
	if n <= 0 {
		return int64(def)
	}
	return int64(n)
}

func utc(t sql.NullTime) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}
