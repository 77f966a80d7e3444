// Package sqlite is the embedded store adapter (modernc.org/sqlite, no cgo):
// a shard database in one file, with the control records, the leader lease
// and the biller catalog in the same file as the source tables.
//
// Concurrency: the database runs in WAL mode with a busy timeout. Every
// write goes through one connection (a *sql.DB with one open connection)
// inside BEGIN IMMEDIATE, so the pump's own workers queue in Go rather than
// meeting SQLITE_BUSY, and a transaction that reads then writes holds the
// write lock from its start. Reads use a separate pool.
//
// Time: control records, leases and the catalog keep INTEGER unix
// milliseconds taken from the database clock (unixepoch('subsec')), never
// from the process. Source tables are the applications' own: their
// created-at columns must hold UTC text in SQLite's datetime form
// 'YYYY-MM-DD HH:MM:SS.SSS' (what strftime('%Y-%m-%d %H:%M:%f','now')
// writes), so that comparing them with a cut-over formatted the same way
// (sourceTimeLayout) is a text comparison an index on (biller, created_at)
// serves. The low watermarks of the pending scan (datapump_watermark) keep
// their created-at and cut-over in that form too, for the same reason.
// Rows with a NULL created-at are never pending.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationTable is goose's version table; named for the pump so it never
// meets an application's own goose table in a shared shard database.
const migrationTable = "datapump_goose_version"

// busyTimeout is how long a connection waits for another process's lock.
const busyTimeout = 10 * time.Second

// sourceTimeLayout is the form of source created-at values and of the
// cut-over they are compared with (UTC).
const sourceTimeLayout = "2006-01-02 15:04:05.000"

// nowMS is the database clock in unix milliseconds, as SQL.
const nowMS = `CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER)`

// Config configures Open.
type Config struct {
	// Path is the database file; it is created if missing.
	Path string
	// Sources are the item type mappings onto the source tables.
	Sources []store.Source
	// Logger receives the adapter's logs; nil discards them.
	Logger *slog.Logger
}

// Validate checks the configuration and names the bad field.
func (c Config) Validate() error {
	if c.Path == "" {
		return errors.New("path: required")
	}
	if strings.ContainsAny(c.Path, "?#") || strings.HasPrefix(c.Path, "file:") || strings.Contains(c.Path, ":memory:") {
		return fmt.Errorf("path: %q must be a plain file path", c.Path)
	}
	seen := map[string]bool{}
	for i, s := range c.Sources {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("sources[%d] (%s): %w", i, s.ItemType, err)
		}
		if seen[s.ItemType] {
			return fmt.Errorf("sources[%d] (%s): item_type: defined twice", i, s.ItemType)
		}
		seen[s.ItemType] = true
	}
	return nil
}

// Store is a SQLite shard database. It implements store.Store,
// store.Leaser, store.DemoSource and catalog.Catalog.
type Store struct {
	write   *sql.DB
	read    *sql.DB
	sources *sourceSet
	log     *slog.Logger
}

var (
	_ store.Store      = (*Store)(nil)
	_ store.Leaser     = (*Store)(nil)
	_ store.DemoSource = (*Store)(nil)
	_ catalog.Catalog  = (*Store)(nil)
)

// Open validates cfg and opens the database file, creating it (and its
// directory) if missing. It does not migrate: call Migrate.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if dir := filepath.Dir(cfg.Path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create database directory: %w", err)
		}
	}
	write, err := sql.Open("sqlite", DSN(cfg.Path, true))
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)
	// Switch the file to WAL before any reader opens it.
	if err := write.PingContext(ctx); err != nil {
		write.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", cfg.Path, err)
	}
	read, err := sql.Open("sqlite", DSN(cfg.Path, false))
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	read.SetMaxOpenConns(8)
	read.SetMaxIdleConns(8)
	return &Store{write: write, read: read, sources: newSourceSet(cfg.Sources), log: log}, nil
}

// DSN returns the modernc.org/sqlite data source name the adapter opens
// path with: WAL journal, a busy timeout, foreign keys, NORMAL sync (safe
// in WAL mode), and for the writer, BEGIN IMMEDIATE transactions.
func DSN(path string, writer bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	if writer {
		q.Set("_txlock", "immediate")
	} else {
		q.Add("_pragma", "query_only(1)")
	}
	return path + "?" + q.Encode()
}

// Migrate creates or upgrades the pump's tables (datapump_control,
// datapump_lease, datapump_biller, datapump_watermark and goose's
// datapump_goose_version). It never touches source tables and is safe to
// run again.
func (s *Store) Migrate(ctx context.Context) error {
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, s.write, fsys,
		goose.WithTableName(migrationTable), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, r := range res {
		s.log.InfoContext(ctx, "migration applied", "version", r.Source.Version, "file", r.Source.Path)
	}
	return nil
}

// Ping checks the database is reachable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.read.PingContext(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// Close releases the connections.
func (s *Store) Close() error {
	return errors.Join(s.read.Close(), s.write.Close())
}

// Now reads the database clock (millisecond precision, UTC).
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var ms int64
	if err := s.read.QueryRowContext(ctx, `SELECT `+nowMS).Scan(&ms); err != nil {
		return time.Time{}, fmt.Errorf("read database clock: %w", err)
	}
	return time.UnixMilli(ms).UTC(), nil
}

// inWrite runs fn in a BEGIN IMMEDIATE transaction on the write connection.
func (s *Store) inWrite(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (s *Store) source(itemType string) (*source, error) {
	src, ok := s.sources.byType[itemType]
	if !ok {
		return nil, fmt.Errorf("%w: %q", store.ErrUnknownItemType, itemType)
	}
	return src, nil
}

// msTime turns a nullable unix-millisecond column into a time (zero for NULL).
func msTime(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64).UTC()
}

// msArg turns a time into a unix-millisecond parameter (NULL for zero).
func msArg(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

// sourceTimeArg formats a time as source tables hold it ("" for zero,
// which every created-at is at or after).
func sourceTimeArg(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(sourceTimeLayout)
}

// parseSourceTime reads a source created-at value: SQLite datetime text
// (with or without fraction, 'T' and zone), or a time the driver already
// converted for a DATETIME column.
func parseSourceTime(v any) (time.Time, error) {
	switch x := v.(type) {
	case nil:
		return time.Time{}, nil
	case time.Time:
		return x.UTC(), nil
	case []byte:
		return parseSourceTime(string(x))
	case string:
		for _, layout := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02T15:04:05.999999999", time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02"} {
			if t, err := time.Parse(layout, x); err == nil {
				return t.UTC(), nil
			}
		}
		return time.Time{}, fmt.Errorf("created-at %q is not a SQLite datetime", x)
	}
	return time.Time{}, fmt.Errorf("created-at of type %T is not a datetime", v)
}

// durationMS is a duration in whole milliseconds, at least zero.
func durationMS(d time.Duration) int64 {
	if d < 0 {
		return 0
	}
	return d.Milliseconds()
}
