package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/datapump/datapump/internal/config"
)

// postgresEnv owns the schemas (and NATS streams) one run creates on the
// shared servers, and drops them on Close.
type postgresEnv struct {
	dsn     string
	natsURL string
	id      string
	pool    *pgxpool.Pool
	schemas []string
	streams bool
}

func newPostgresEnv(ctx context.Context, dsn, natsURL string) (*postgresEnv, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	// Every run starts from a checkpoint, so that none inherits the WAL of
	// the run before it. With the server's defaults (max_wal_size 1 GB) a
	// checkpoint starts after about 500 MB of WAL, about two runs' worth;
	// without this one it starts inside whichever phase crosses the mark,
	// pump or River, and that phase pays for writing out the pages and for
	// a full-page image of each page it then modifies first. From a
	// checkpoint, one run's load and timed phase stay below the mark.
	if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil {
		pool.Close()
		return nil, fmt.Errorf("checkpoint before the run (the benchmark's role needs superuser or pg_checkpoint): %w", err)
	}
	return &postgresEnv{dsn: dsn, natsURL: natsURL, id: fmt.Sprintf("bench%08x", rand.Uint32()), pool: pool}, nil
}

// schema creates a fresh schema named after the run and suffix.
func (e *postgresEnv) schema(ctx context.Context, suffix string) (string, error) {
	name := e.id + "_" + suffix
	if _, err := e.pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create schema %s: %w", name, err)
	}
	e.schemas = append(e.schemas, name)
	return name, nil
}

// dsnWith returns the DSN with search_path set to schema.
func (e *postgresEnv) dsnWith(schema string) string {
	sep := "?"
	if strings.Contains(e.dsn, "?") {
		sep = "&"
	}
	return e.dsn + sep + "search_path=" + schema
}

// configure points the catalog and shards at fresh schemas and the bus at
// the external NATS server with a topic prefix unique to the run.
func (e *postgresEnv) configure(ctx context.Context, cfg *config.Config, shards int) error {
	cat, err := e.schema(ctx, "cat")
	if err != nil {
		return err
	}
	cfg.Catalog = config.CatalogConfig{Driver: config.DriverPostgres, DSN: e.dsnWith(cat)}
	cfg.Shards = nil
	for i := 1; i <= shards; i++ {
		s, err := e.schema(ctx, fmt.Sprintf("s%d", i))
		if err != nil {
			return err
		}
		cfg.Shards = append(cfg.Shards, config.ShardConfig{Name: fmt.Sprintf("shard%d", i), Driver: config.DriverPostgres, DSN: e.dsnWith(s), MaxConns: 16})
	}
	cfg.Bus.NATS.URL = e.natsURL
	cfg.Bus.NATS.Embedded = config.EmbeddedConfig{}
	cfg.Bus.TopicPrefix = e.id + "-"
	e.streams = true
	return nil
}

// Close drops the schemas and the run's streams.
func (e *postgresEnv) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, s := range e.schemas {
		_, _ = e.pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{s}.Sanitize()+" CASCADE")
	}
	e.pool.Close()
	if e.streams {
		deleteStreams(ctx, e.natsURL, e.id)
	}
}

// deleteStreams removes the streams whose name contains prefix.
func deleteStreams(ctx context.Context, url, prefix string) {
	nc, err := nats.Connect(url)
	if err != nil {
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	names := js.StreamNames(ctx)
	var del []string
	for n := range names.Name() {
		if strings.Contains(strings.ToLower(n), strings.ToLower(prefix)) {
			del = append(del, n)
		}
	}
	for _, n := range del {
		_ = js.DeleteStream(ctx, n)
	}
}
