// Package app assembles the adapters a Config names (stores, catalog, bus,
// CIS client) and runs the jobs on them. It is the only place that knows
// every adapter; the jobs in pump see only the ports.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/datapump/datapump/internal/admin"
	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/bus/jetstream"
	"github.com/datapump/datapump/internal/bus/servicebus"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/catalog/yamlfile"
	"github.com/datapump/datapump/internal/cis"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/postgres"
	"github.com/datapump/datapump/internal/store/sqlite"
	"github.com/datapump/datapump/internal/store/sqlserver"
	"github.com/datapump/datapump/internal/telemetry"
)

// App holds the open adapters of one configuration.
type App struct {
	Config  config.Config
	Logger  *slog.Logger
	Items   *items.Registry
	Shards  map[string]store.Store
	Catalog catalog.Catalog
	Leaser  store.Leaser
	Bus     bus.Bus
	CIS     *cis.Client
	Metrics *telemetry.Metrics
	// Tracer traces items across the jobs (a no-op unless tracing is configured).
	Tracer trace.Tracer

	closers []func() error
}

// Open opens every database and the catalog. The bus is opened by OpenBus,
// since migrate and the operator commands do not need it.
func Open(ctx context.Context, cfg config.Config, logger *slog.Logger) (*App, error) {
	reg, err := cfg.Registry()
	if err != nil {
		return nil, fmt.Errorf("item types: %w", err)
	}
	a := &App{Config: cfg, Logger: logger, Items: reg, Shards: map[string]store.Store{}, Metrics: telemetry.NewMetrics()}
	tp, shutdownTracing, err := telemetry.NewTracerProvider(ctx, telemetry.TracingConfig{
		OTLPEndpoint: cfg.Tracing.OTLPEndpoint, Insecure: cfg.Tracing.Insecure, SampleRatio: cfg.Tracing.SampleRatio, ServiceName: "datapump",
	})
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	a.Tracer = tp.Tracer("github.com/datapump/datapump")
	a.closers = append(a.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return shutdownTracing(ctx)
	})
	for _, sc := range cfg.Shards {
		st, err := openStore(ctx, sc.Driver, sc.DSN, sc.MaxConns, reg.Sources(), logger.With("shard", sc.Name))
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("open shard %s: %w", sc.Name, err)
		}
		a.Shards[sc.Name] = st
		a.closers = append(a.closers, st.Close)
	}
	switch cfg.Catalog.Driver {
	case config.DriverYAML:
		c, err := yamlfile.Load(cfg.Catalog.File)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("open catalog: %w", err)
		}
		a.Catalog = c
		// The lease lives in the first shard when the catalog is a file.
		a.Leaser = a.Shards[cfg.Shards[0].Name].(store.Leaser)
	default:
		st, err := openStore(ctx, cfg.Catalog.Driver, cfg.Catalog.DSN, 4, nil, logger.With("db", "catalog"))
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("open catalog: %w", err)
		}
		a.closers = append(a.closers, st.Close)
		a.Catalog = st.(catalog.Catalog)
		a.Leaser = st.(store.Leaser)
	}
	return a, nil
}

// openStore opens a database; nil sources is a catalog-only database.
func openStore(ctx context.Context, driver, dsn string, maxConns int, sources []store.Source, logger *slog.Logger) (store.Store, error) {
	switch driver {
	case config.DriverSQLite:
		return sqlite.Open(ctx, sqlite.Config{Path: dsn, Sources: sources, Logger: logger})
	case config.DriverPostgres:
		return postgres.Open(ctx, postgres.Config{DSN: dsn, MaxConns: int32(maxConns), Sources: sources, Logger: logger})
	case config.DriverSQLServer:
		return sqlserver.Open(ctx, sqlserver.Config{DSN: dsn, MaxConns: maxConns, Sources: sources, Logger: logger})
	}
	return nil, fmt.Errorf("unknown driver %q", driver)
}

// Migrate creates or upgrades the pump's tables in every shard and the
// catalog database. Source tables are never touched.
func (a *App) Migrate(ctx context.Context) error {
	for name, st := range a.Shards {
		if err := st.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate shard %s: %w", name, err)
		}
	}
	if m, ok := a.Catalog.(interface{ Migrate(context.Context) error }); ok {
		if err := m.Migrate(ctx); err != nil {
			return fmt.Errorf("migrate catalog: %w", err)
		}
	}
	return nil
}

// OpenBus connects to the broker and the CIS client.
func (a *App) OpenBus(ctx context.Context) error {
	b, err := openBus(ctx, a.Config, a.Logger)
	if err != nil {
		return fmt.Errorf("open bus: %w", err)
	}
	a.Bus = bus.WithTopicPrefix(b, a.Config.Bus.TopicPrefix)
	a.closers = append(a.closers, b.Close)
	c := a.Config.CIS
	client, err := cis.New(cis.Config{
		DefaultTimeout: c.Timeout, Retries: c.Retries, BackoffInitial: c.BackoffInitial, BackoffMax: c.BackoffMax,
		DefaultRatePerSecond: c.RatePerSecond, DefaultMaxConcurrent: c.MaxConcurrent,
		BreakerFailures: c.BreakerFailures, BreakerOpenFor: c.BreakerOpenFor, Logger: a.Logger,
		// Every item handler of every type may be in one CIS call at once.
		MaxIdleConnsPerHost: a.Config.ItemConsumer.Concurrency * len(a.Items.Types()),
	})
	if err != nil {
		return fmt.Errorf("cis client: %w", err)
	}
	a.CIS = client
	return nil
}

// Deps returns the ports the jobs work through. Events default to the
// app's metrics.
func (a *App) Deps(events pump.Events) *pump.Deps {
	var sender pump.CISSender
	if a.CIS != nil {
		sender = a.CIS
	}
	if events == nil {
		events = telemetry.PumpEvents{M: a.Metrics, Now: time.Now}
	}
	return &pump.Deps{
		Catalog: a.Catalog, Shards: a.Shards, Leaser: a.Leaser, Bus: a.Bus, Items: a.Items,
		CIS: sender, Logger: a.Logger, Now: time.Now, Events: events, Tracer: a.Tracer,
	}
}

// Backlog reads every biller's backlog without Processed records (the
// metrics refresher runs it every publisher interval on every pod, so it
// must not read the history) and refreshes the breaker gauges.
func (a *App) Backlog(ctx context.Context) ([]pump.BillerBacklog, error) {
	billers, err := pump.Backlog(ctx, a.Catalog, a.Shards, pump.BacklogParams{})
	if a.CIS != nil {
		for _, b := range billers {
			a.Metrics.CISBreakerState.WithLabelValues(b.BillerID).Set(breakerValue(a.CIS.BreakerState(b.BillerID)))
		}
	}
	return billers, err
}

func breakerValue(state string) float64 {
	switch state {
	case "half-open":
		return 1
	case "open":
		return 2
	}
	return 0
}

// Admin returns the admin HTTP server over this app.
func (a *App) Admin() *admin.Server {
	return &admin.Server{Catalog: a.Catalog, Shards: a.Shards, Ready: a.Ping, Registry: a.Metrics.Registry, Logger: a.Logger}
}

func openBus(ctx context.Context, cfg config.Config, logger *slog.Logger) (bus.Bus, error) {
	switch cfg.Bus.Driver {
	case config.DriverServiceBus:
		sb := cfg.Bus.ServiceBus
		b, err := servicebus.Open(ctx, servicebus.Config{
			ConnectionString: sb.ConnectionString, Namespace: sb.Namespace, AdminEndpoint: sb.AdminEndpoint, Logger: logger,
		})
		if err != nil {
			return nil, err
		}
		if err := b.Ping(ctx); err != nil {
			b.Close()
			return nil, err
		}
		return b, nil
	case config.DriverNATS:
		n := cfg.Bus.NATS
		return jetstream.Open(ctx, jetstream.Config{
			URL: n.URL,
			Embedded: jetstream.EmbeddedConfig{
				StoreDir: n.Embedded.StoreDir, SyncAlways: n.Embedded.SyncAlways,
				Listen: n.Embedded.Listen, Host: n.Embedded.Host, Port: n.Embedded.Port,
			},
			Logger:      logger,
			ConnectName: "datapump-" + cfg.Owner,
		})
	}
	return nil, fmt.Errorf("unknown bus driver %q", cfg.Bus.Driver)
}

// Ping checks every database and the bus.
func (a *App) Ping(ctx context.Context) error {
	var errs []error
	for name, st := range a.Shards {
		if err := st.Ping(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shard %s: %w", name, err))
		}
	}
	if a.Bus != nil {
		if err := a.Bus.Ping(ctx); err != nil {
			errs = append(errs, fmt.Errorf("bus: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Close closes everything Open and OpenBus opened, in reverse order.
func (a *App) Close() error {
	var errs []error
	for i := len(a.closers) - 1; i >= 0; i-- {
		errs = append(errs, a.closers[i]())
	}
	a.closers = nil
	return errors.Join(errs...)
}
