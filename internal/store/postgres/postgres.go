// Package postgres is the PostgreSQL adapter of the store port (and of the
// catalog port, whose billers live in the same database), on jackc/pgx v5.
//
// Every time the adapter writes or compares comes from the database clock
// (now() of the statement's transaction, or clock_timestamp()), never from
// the pod, so clock skew between pods cannot hand one item to two workers.
// Table and column names come from store.Source after Validate and are
// quoted as given, so in PostgreSQL they are case-sensitive: name a table
// created without quotes in lower case. Every value is a query parameter.
//
// Migrations (pressly/goose, embedded) create only the pump's own tables:
// datapump_control, datapump_lease, datapump_biller and goose's version
// table datapump_schema_version. Source tables are read, never changed,
// except by the demo source (DemoSchemaCreate, DemoItemsInsert), which
// stands in for the applications that own them.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/store"
)

// Config says how to reach the database and where the item types live.
type Config struct {
	// DSN is a PostgreSQL connection string (URL or key=value form).
	DSN string
	// Schema, when set, is the search_path of every connection: the schema
	// of the pump's tables and of unqualified source tables. It must be a
	// plain identifier; Migrate creates it if it is missing.
	Schema string
	// MaxConns caps the pool; zero keeps pgxpool's default.
	MaxConns int32
	// Sources maps each item type onto its table.
	Sources []store.Source
	// Logger receives the adapter's logs; nil discards them.
	Logger *slog.Logger
}

// Store is one PostgreSQL database: a shard's items and control records,
// the publisher's lease, the demo source tables and the biller catalog.
type Store struct {
	pool    *pgxpool.Pool
	log     *slog.Logger
	schema  string
	sources map[string]source
	order   []string // item types, sorted
}

var (
	_ store.Store      = (*Store)(nil)
	_ store.Leaser     = (*Store)(nil)
	_ store.DemoSource = (*Store)(nil)
	_ catalog.Catalog  = (*Store)(nil)
)

// Open validates cfg, connects and pings the database. It does not migrate.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.DSN == "" {
		return nil, errors.New("open postgres: dsn: required")
	}
	if cfg.Schema != "" && (!store.ValidIdentifier(cfg.Schema) || strings.Contains(cfg.Schema, ".")) {
		return nil, fmt.Errorf("open postgres: schema: %q is not a valid SQL identifier", cfg.Schema)
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("open postgres: max_conns: %d must not be negative", cfg.MaxConns)
	}
	sources, order, err := compileSources(cfg.Sources)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}

	redact := newRedactor(cfg.DSN)
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, redact(fmt.Errorf("open postgres: parse dsn: %w", err))
	}
	if cfg.Schema != "" {
		pcfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{cfg.Schema}.Sanitize()
	}
	// Every statement of the pump is a short index-driven one; JIT
	// compilation (on by default since PostgreSQL 12, triggered by the
	// planner's cost estimate) costs it tens to hundreds of milliseconds
	// per execution whenever an estimate runs high. A DSN may still turn
	// it on explicitly.
	if _, set := pcfg.ConnConfig.RuntimeParams["jit"]; !set {
		pcfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, redact(fmt.Errorf("open postgres: %w", err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, redact(fmt.Errorf("open postgres: ping: %w", err))
	}
	return &Store{pool: pool, log: log, schema: cfg.Schema, sources: sources, order: order}, nil
}

// Ping checks the database is reachable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres: %w", err)
	}
	return nil
}

// Close releases the connections.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Now reads the database clock.
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	var t time.Time
	if err := s.pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("read database clock: %w", err)
	}
	return t.UTC(), nil
}

// lockKey derives an advisory lock key for one purpose within this
// store's schema, so stores in different schemas do not wait on each other.
func (s *Store) lockKey(purpose string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("datapump:" + purpose + ":" + s.schema))
	return int64(h.Sum64())
}

// source is a validated store.Source with its identifiers quoted.
type source struct {
	store.Source
	table, key, biller, createdAt, typeColumn string
	// enrich reads one item ($1); enrichSet reads a batch of them ($1 an
	// array) with each row led by its key's position in the array.
	enrich, enrichSet string
}

func compileSources(in []store.Source) (map[string]source, []string, error) {
	out := make(map[string]source, len(in))
	var order []string
	for i, src := range in {
		if err := src.Validate(); err != nil {
			if src.ItemType != "" {
				return nil, nil, fmt.Errorf("sources[%d] (%s): %w", i, src.ItemType, err)
			}
			return nil, nil, fmt.Errorf("sources[%d]: %w", i, err)
		}
		if _, dup := out[src.ItemType]; dup {
			return nil, nil, fmt.Errorf("sources[%d] (%s): item_type: defined twice", i, src.ItemType)
		}
		c := source{
			Source:    src,
			table:     pgx.Identifier(strings.Split(src.Table, ".")).Sanitize(),
			key:       pgx.Identifier{src.KeyColumn}.Sanitize(),
			biller:    pgx.Identifier{src.BillerColumn}.Sanitize(),
			createdAt: pgx.Identifier{src.CreatedAtColumn}.Sanitize(),
			enrich:    bindEnrich(src.EnrichQuery),
			enrichSet: bindEnrichSet(src.EnrichQuery),
		}
		if src.TypeColumn != "" {
			c.typeColumn = pgx.Identifier{src.TypeColumn}.Sanitize()
		}
		out[src.ItemType] = c
		order = append(order, src.ItemType)
	}
	slices.Sort(order)
	return out, order, nil
}

func (s *Store) source(itemType string) (source, error) {
	src, ok := s.sources[itemType]
	if !ok {
		return source{}, fmt.Errorf("%w: %q", store.ErrUnknownItemType, itemType)
	}
	return src, nil
}

// typeFilter returns the extra condition restricting a shared table to one
// item type, binding its value as parameter n, or "" when the type has its
// own table.
func (src source) typeFilter(alias string, n int) string {
	if src.typeColumn == "" {
		return ""
	}
	return fmt.Sprintf(" AND %s.%s = $%d", alias, src.typeColumn, n)
}

// enrichSentinel stands in for the placeholder while store.BindEnrichQuery
// rewrites the query: it passes its placeholder to regexp.ReplaceAllString
// as a replacement template, where "$1" would mean the first group.
const enrichSentinel = "__datapump_item_id__"

// bindEnrich replaces the enrichment query's :id with $1.
func bindEnrich(q string) string {
	return strings.ReplaceAll(store.BindEnrichQuery(q, enrichSentinel), enrichSentinel, "$1")
}

// bindEnrichSet wraps the enrichment query in a lateral join over an
// array of item ids, so one statement reads a whole batch: each result row
// starts with the (1-based) position of its id in the array, then the
// query's first row for that id, exactly as ItemEnrich reads it. An id with
// no row has no result row.
func bindEnrichSet(q string) string {
	inner := store.BindEnrichQuery(q, "datapump_keys.item_id")
	return `SELECT datapump_keys.ord, datapump_row.* FROM unnest($1::bigint[]) WITH ORDINALITY AS datapump_keys(item_id, ord) ` +
		`CROSS JOIN LATERAL (SELECT * FROM (` + inner + `) datapump_q LIMIT 1) datapump_row`
}

// redactedError hides the connection string's password from the message
// while keeping the cause for errors.Is.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

var (
	kvPassword  = regexp.MustCompile(`(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)
	urlPassword = regexp.MustCompile(`://[^:/@\s]*:([^@\s]*)@`)
)

// newRedactor returns a function that removes every password found in dsn
// from an error's message. pgx already redacts what it recognises; this is
// the belt to its braces.
func newRedactor(dsn string) func(error) error {
	var secrets []string
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			secrets = append(secrets, pw, url.QueryEscape(pw), url.PathEscape(pw))
		}
	}
	for _, m := range urlPassword.FindAllStringSubmatch(dsn, -1) {
		secrets = append(secrets, m[1])
	}
	for _, m := range kvPassword.FindAllStringSubmatch(dsn, -1) {
		secrets = append(secrets, strings.Trim(m[1], "'"))
	}
	return func(err error) error {
		msg := err.Error()
		for _, sec := range secrets {
			if sec != "" {
				msg = strings.ReplaceAll(msg, sec, "xxxxx")
			}
		}
		return &redactedError{msg: msg, err: err}
	}
}
