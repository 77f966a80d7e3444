package sqlserver

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"strings"
	"testing/fstest"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrations embed.FS

// versionTable is goose's record of applied migrations, named so an
// operator sees it belongs to the pump.
const versionTable = "datapump_schema_version"

// schemaPlaceholder marks, in the migration files, where the configured
// schema goes.
const schemaPlaceholder = "{{schema}}"

// migrateLockTimeoutMS is how long Migrate waits for another process's
// migration (sp_getapplock's @LockTimeout, in milliseconds).
const migrateLockTimeoutMS int32 = 300_000

// minCompatibilityLevel is the lowest database compatibility level with
// OPENJSON, which carries every batch of the adapter.
const minCompatibilityLevel = 130

// compatibilityLevelSQL reads the current database's compatibility level.
const compatibilityLevelSQL = `SELECT compatibility_level FROM sys.databases WHERE name = DB_NAME()`

// renderMigrations returns the embedded migration files with the quoted
// schema filled in, as goose reads them.
func renderMigrations(quotedSchema string) (fs.FS, error) {
	files, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	out := fstest.MapFS{}
	for _, name := range files {
		b, err := migrations.ReadFile(name)
		if err != nil {
			return nil, err
		}
		out[strings.TrimPrefix(name, "migrations/")] = &fstest.MapFile{Data: []byte(strings.ReplaceAll(string(b), schemaPlaceholder, quotedSchema))}
	}
	return out, nil
}

// createSchemaSQL creates the configured schema if it is missing, inside a
// transaction that holds an exclusive application lock, so two processes
// migrating a new database at once do not both try. CREATE SCHEMA must be
// alone in its batch, hence EXEC; the name is a validated identifier.
func (s *Store) createSchemaSQL() (string, params) {
	var p params
	q := `DECLARE @lock int;
EXEC @lock = sp_getapplock @Resource = ` + p.add("datapump:schema:"+s.schema) + `, @LockMode = 'Exclusive', @LockOwner = 'Transaction', @LockTimeout = ` + p.add(migrateLockTimeoutMS) + `;
IF @lock >= 0 AND SCHEMA_ID(` + p.add(s.schema) + `) IS NULL
    EXEC (N'CREATE SCHEMA ` + s.t.schema + `');
SELECT @lock;`
	return q, p
}

// Migrate creates or upgrades the pump's tables (control records, lease,
// billers, watermarks) in the configured schema, creating the schema first
// if it is missing, after checking the database's compatibility level
// allows OPENJSON. It never touches source tables and is safe to run again,
// and from several processes at once: goose holds an application lock
// (sp_getapplock) on its connection while it migrates.
func (s *Store) Migrate(ctx context.Context) error {
	var level int
	if err := s.db.QueryRowContext(ctx, compatibilityLevelSQL).Scan(&level); err != nil {
		return fmt.Errorf("migrate: read compatibility level: %w", err)
	}
	if level < minCompatibilityLevel {
		return fmt.Errorf("migrate: database compatibility level %d: the adapter needs %d or higher (SQL Server 2016) for OPENJSON", level, minCompatibilityLevel)
	}
	if err := s.ensureSchema(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	fsys, err := renderMigrations(s.t.schema)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectMSSQL, s.db, fsys,
		goose.WithTableName(s.t.version),
		goose.WithSessionLocker(&appLocker{resource: "datapump:migrate:" + s.schema}),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(s.log),
	)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	results, err := provider.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, r := range results {
		s.log.Info("migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

func (s *Store) ensureSchema(ctx context.Context) error {
	q, args := s.createSchemaSQL()
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var lock int
		if err := tx.QueryRowContext(ctx, q, args...).Scan(&lock); err != nil {
			return fmt.Errorf("create schema %s: %w", s.schema, err)
		}
		if lock < 0 {
			return fmt.Errorf("create schema %s: sp_getapplock returned %d", s.schema, lock)
		}
		return nil
	})
}

// appLocker is goose's session lock on SQL Server: an exclusive
// application lock owned by the migrating connection's session.
type appLocker struct {
	resource string
}

var _ lock.SessionLocker = (*appLocker)(nil)

// appLockSQL takes the session's application lock; sp_getapplock returns 0
// or 1 when granted and a negative number on timeout, cancel or deadlock.
const appLockSQL = `DECLARE @lock int;
EXEC @lock = sp_getapplock @Resource = @p1, @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = @p2;
SELECT @lock;`

// appUnlockSQL releases it.
const appUnlockSQL = `DECLARE @lock int;
EXEC @lock = sp_releaseapplock @Resource = @p1, @LockOwner = 'Session';
SELECT @lock;`

// SessionLock waits for the application lock on conn's session.
func (l *appLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	var res int
	if err := conn.QueryRowContext(ctx, appLockSQL, l.resource, migrateLockTimeoutMS).Scan(&res); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	if res < 0 {
		return fmt.Errorf("take migration lock: sp_getapplock returned %d", res)
	}
	return nil
}

// SessionUnlock releases the application lock of conn's session.
func (l *appLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var res int
	if err := conn.QueryRowContext(ctx, appUnlockSQL, l.resource).Scan(&res); err != nil {
		return fmt.Errorf("release migration lock: %w", err)
	}
	if res < 0 {
		return fmt.Errorf("release migration lock: sp_releaseapplock returned %d", res)
	}
	return nil
}
