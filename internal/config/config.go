// Package config loads the pump's configuration: defaults, then one YAML
// file, then DATAPUMP_* environment variables, then Validate, which names
// the key at fault. String values in the file may name environment
// variables as ${VAR}, which is how secrets (DSN passwords) stay out of it.
package config

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
)

// EnvPrefix starts every environment override: DATAPUMP_BUS_NATS_URL sets bus.nats.url.
const EnvPrefix = "DATAPUMP_"

// Drivers.
const (
	DriverSQLite     = "sqlite"
	DriverPostgres   = "postgres"
	DriverSQLServer  = "sqlserver"
	DriverYAML       = "yaml"
	DriverNATS       = "nats"
	DriverServiceBus = "servicebus"
)

// Config is the whole configuration.
type Config struct {
	// Owner names this replica in leases and claims (default: host name).
	Owner          string               `koanf:"owner"`
	Catalog        CatalogConfig        `koanf:"catalog"`
	Shards         []ShardConfig        `koanf:"shards"`
	Bus            BusConfig            `koanf:"bus"`
	Publisher      PublisherConfig      `koanf:"publisher"`
	BillerConsumer BillerConsumerConfig `koanf:"biller_consumer"`
	ItemConsumer   ItemConsumerConfig   `koanf:"item_consumer"`
	CIS            CISConfig            `koanf:"cis"`
	// ItemTypes replaces the built-in item types when set.
	ItemTypes []ItemTypeConfig `koanf:"item_types"`
	HTTP      HTTPConfig       `koanf:"http"`
	Log       LogConfig        `koanf:"log"`
	Tracing   TracingConfig    `koanf:"tracing"`
}

// TracingConfig sends OpenTelemetry traces to an OTLP/HTTP collector.
type TracingConfig struct {
	// OTLPEndpoint is host:port of the collector; empty disables tracing.
	OTLPEndpoint string  `koanf:"otlp_endpoint"`
	Insecure     bool    `koanf:"insecure"`
	SampleRatio  float64 `koanf:"sample_ratio"`
}

// CatalogConfig says where the billers are.
type CatalogConfig struct {
	// Driver is sqlite, postgres (a table in a config database) or yaml (a read-only file).
	Driver string `koanf:"driver"`
	// DSN is the database (a file path for sqlite).
	DSN string `koanf:"dsn"`
	// File is the YAML catalog (driver yaml).
	File string `koanf:"file"`
}

// ShardConfig is one biller shard database.
type ShardConfig struct {
	Name string `koanf:"name"`
	// Driver is sqlite or postgres.
	Driver string `koanf:"driver"`
	// DSN is the connection string (a file path for sqlite).
	DSN      string `koanf:"dsn"`
	MaxConns int    `koanf:"max_conns"`
}

// BusConfig is the message broker.
type BusConfig struct {
	// Driver is nats or servicebus.
	Driver     string           `koanf:"driver"`
	NATS       NATSConfig       `koanf:"nats"`
	ServiceBus ServiceBusConfig `koanf:"servicebus"`
	// TopicPrefix is put in front of every topic name, so several
	// environments can share one broker.
	TopicPrefix string `koanf:"topic_prefix"`
	// DuplicateWindow is how long the broker drops repeated MessageIDs.
	DuplicateWindow time.Duration `koanf:"duplicate_window"`
	// LockDuration is the peek-lock duration of a delivered message.
	LockDuration time.Duration `koanf:"lock_duration"`
	// MaxDeliveries before a message is dead-lettered.
	MaxDeliveries int `koanf:"max_deliveries"`
}

// ServiceBusConfig is the Azure Service Bus adapter: a connection string
// (a secret: give it as ${VAR}), or a namespace reached with the Azure
// default credential (workload identity on AKS).
type ServiceBusConfig struct {
	ConnectionString string `koanf:"connection_string"`
	// Namespace is the fully qualified namespace, e.g. acme.servicebus.windows.net.
	Namespace string `koanf:"namespace"`
	// AdminEndpoint overrides the management endpoint (the emulator's).
	AdminEndpoint string `koanf:"admin_endpoint"`
}

// NATSConfig is the JetStream adapter: an external server, or an embedded one.
type NATSConfig struct {
	// URL of an external server; empty starts an embedded server in-process.
	URL      string         `koanf:"url"`
	Embedded EmbeddedConfig `koanf:"embedded"`
}

// EmbeddedConfig is the in-process NATS server.
type EmbeddedConfig struct {
	// StoreDir keeps JetStream data; empty uses a temporary folder.
	StoreDir string `koanf:"store_dir"`
	// SyncAlways fsyncs every write before acknowledging it.
	SyncAlways bool `koanf:"sync_always"`
	// Listen also serves clients on Host:Port.
	Listen bool   `koanf:"listen"`
	Host   string `koanf:"host"`
	Port   int    `koanf:"port"`
}

// PublisherConfig tunes the biller publisher and the rescuer.
type PublisherConfig struct {
	Interval    time.Duration `koanf:"interval"`
	LeaseTTL    time.Duration `koanf:"lease_ttl"`
	StuckAfter  time.Duration `koanf:"stuck_after"`
	RescueBatch int           `koanf:"rescue_batch"`
	// ReconcileAfter is how long a direct biller's source has to announce
	// an item before the reconcile sweep publishes it.
	ReconcileAfter time.Duration `koanf:"reconcile_after"`
	// WatermarkLag is how far behind the database clock the pending scan's
	// watermarks stay: longer than the longest source transaction plus the
	// clock skew between the applications and the database.
	WatermarkLag time.Duration `koanf:"watermark_lag"`
	// FullSweepEvery is how often the leader scans every biller from its
	// cut-over, beside the rounds, for rows that committed later than
	// WatermarkLag (its cost follows the history).
	FullSweepEvery time.Duration `koanf:"full_sweep_every"`
}

// BillerConsumerConfig tunes the biller consumer (scaling point 1).
type BillerConsumerConfig struct {
	Concurrency        int           `koanf:"concurrency"`
	Batch              int           `koanf:"batch"`
	MaxItemsPerMessage int           `koanf:"max_items_per_message"`
	TimeBudget         time.Duration `koanf:"time_budget"`
	RetryDelay         time.Duration `koanf:"retry_delay"`
}

// ItemConsumerConfig tunes the item consumers (scaling point 2).
type ItemConsumerConfig struct {
	Concurrency  int           `koanf:"concurrency"`
	Lease        time.Duration `koanf:"lease"`
	MaxAttempts  int           `koanf:"max_attempts"`
	RetryInitial time.Duration `koanf:"retry_initial"`
	RetryMax     time.Duration `koanf:"retry_max"`
	// Batch bounds how many items' claims, enrichment reads or finishes go
	// to a shard in one statement.
	Batch int `koanf:"batch"`
}

// CISConfig are the defaults of the CIS client; billers may override some.
type CISConfig struct {
	Timeout         time.Duration `koanf:"timeout"`
	Retries         int           `koanf:"retries"`
	BackoffInitial  time.Duration `koanf:"backoff_initial"`
	BackoffMax      time.Duration `koanf:"backoff_max"`
	RatePerSecond   float64       `koanf:"rate_per_second"`
	MaxConcurrent   int           `koanf:"max_concurrent"`
	BreakerFailures int           `koanf:"breaker_failures"`
	BreakerOpenFor  time.Duration `koanf:"breaker_open_for"`
}

// ItemTypeConfig defines an item type by configuration.
type ItemTypeConfig struct {
	Name    string `koanf:"name"`
	Topic   string `koanf:"topic"`
	CISPath string `koanf:"cis_path"`
	// Mapping names a built-in mapping function: payment, paperless or passthrough.
	Mapping string       `koanf:"mapping"`
	Source  SourceConfig `koanf:"source"`
}

// SourceConfig maps an item type onto the application's table.
type SourceConfig struct {
	Table           string `koanf:"table"`
	KeyColumn       string `koanf:"key_column"`
	BillerColumn    string `koanf:"biller_column"`
	CreatedAtColumn string `koanf:"created_at_column"`
	TypeColumn      string `koanf:"type_column"`
	TypeValue       string `koanf:"type_value"`
	EnrichQuery     string `koanf:"enrich_query"`
}

// HTTPConfig is the admin server (health, metrics).
type HTTPConfig struct {
	// Addr to listen on; empty disables the server.
	Addr string `koanf:"addr"`
}

// LogConfig is the structured log.
type LogConfig struct {
	Level  string `koanf:"level"`  // debug, info, warn, error
	Format string `koanf:"format"` // json or text
}

// Default returns the defaults: the embedded NATS server, no shards.
func Default() Config {
	host, _ := os.Hostname()
	return Config{
		Owner:   host,
		Catalog: CatalogConfig{Driver: DriverSQLite},
		Bus: BusConfig{
			Driver:          DriverNATS,
			DuplicateWindow: 10 * time.Minute,
			LockDuration:    30 * time.Second,
			MaxDeliveries:   20,
		},
		Publisher: PublisherConfig{Interval: 5 * time.Second, LeaseTTL: 20 * time.Second, StuckAfter: 2 * time.Minute, RescueBatch: 500, ReconcileAfter: time.Minute,
			WatermarkLag: time.Minute, FullSweepEvery: time.Hour},
		BillerConsumer: BillerConsumerConfig{Concurrency: 4, Batch: 200, MaxItemsPerMessage: 2000, TimeBudget: 20 * time.Second, RetryDelay: 5 * time.Second},
		ItemConsumer:   ItemConsumerConfig{Concurrency: 32, Lease: 2 * time.Minute, MaxAttempts: 8, RetryInitial: 2 * time.Second, RetryMax: 5 * time.Minute, Batch: 100},
		CIS: CISConfig{
			Timeout: 10 * time.Second, Retries: 2, BackoffInitial: 200 * time.Millisecond, BackoffMax: 2 * time.Second,
			MaxConcurrent: 16, BreakerFailures: 20, BreakerOpenFor: 30 * time.Second,
		},
		Log:     LogConfig{Level: "info", Format: "json"},
		Tracing: TracingConfig{SampleRatio: 1},
	}
}

// Load reads defaults, then the YAML file at path (if path is not empty),
// then DATAPUMP_* variables from environ (os.Environ when nil), and validates.
func Load(path string, environ []string) (Config, error) {
	if environ == nil {
		environ = os.Environ()
	}
	k := koanf.New(".")
	if err := k.Load(structs.Provider(Default(), "koanf"), nil); err != nil {
		return Config{}, fmt.Errorf("load defaults: %w", err)
	}
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("read config: %w", err)
		}
		m, err := yaml.Parser().Unmarshal(raw)
		if err != nil {
			return Config{}, fmt.Errorf("parse config %s: %w", path, err)
		}
		expanded, err := expandEnv(m, environ)
		if err != nil {
			return Config{}, fmt.Errorf("config %s: %w", path, err)
		}
		if err := k.Load(confmap.Provider(expanded.(map[string]any), ""), nil); err != nil {
			return Config{}, fmt.Errorf("load config %s: %w", path, err)
		}
	}
	known := map[string]string{}
	for _, key := range k.Keys() {
		known[envName(key)] = key
	}
	var unknownEnv []string
	envProvider := env.Provider(".", env.Opt{
		Prefix:      EnvPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			if key, ok := known[name]; ok {
				return key, value
			}
			if !strings.HasPrefix(name, EnvPrefix+"TEST_") {
				unknownEnv = append(unknownEnv, name)
			}
			return "", nil
		},
	})
	if err := k.Load(envProvider, nil); err != nil {
		return Config{}, fmt.Errorf("load environment: %w", err)
	}
	var cfg Config
	dc := &mapstructure.DecoderConfig{
		DecodeHook:       mapstructure.ComposeDecodeHookFunc(mapstructure.StringToTimeDurationHookFunc()),
		WeaklyTypedInput: true,
		ErrorUnused:      true,
	}
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{DecoderConfig: dc}); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if len(unknownEnv) > 0 {
		slices.Sort(unknownEnv)
		return Config{}, fmt.Errorf("config: unknown environment variable %s (no such key)", strings.Join(unknownEnv, ", "))
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Marshal returns c as a configuration file that Load reads back to c:
// every key, defaults included, so the file alone is the configuration. A
// string value holding ${VAR} is written as it is, and Load expands it.
func Marshal(c Config) ([]byte, error) {
	m, err := structs.Provider(c, "koanf").Read()
	if err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	out, err := yaml.Parser().Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	return out, nil
}

// envName is the environment variable that overrides key.
func envName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// expandEnv replaces ${VAR} in every string value of the parsed file (not
// in comments or keys); an unset variable is an error naming it, never a value.
func expandEnv(v any, environ []string) (any, error) {
	vals := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vals[k] = v
		}
	}
	var missing []string
	var walk func(v any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case string:
			return os.Expand(x, func(name string) string {
				val, ok := vals[name]
				if !ok {
					missing = append(missing, name)
				}
				return val
			})
		case map[string]any:
			out := make(map[string]any, len(x))
			for k, e := range x {
				out[k] = walk(e)
			}
			return out
		case []any:
			out := make([]any, len(x))
			for i, e := range x {
				out[i] = walk(e)
			}
			return out
		}
		return v
	}
	out := walk(v)
	if len(missing) > 0 {
		return nil, fmt.Errorf("environment variable %s is not set", strings.Join(missing, ", "))
	}
	return out, nil
}

// Validate checks the configuration and returns an error naming the first bad key.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Owner == "" {
		add("owner", "required")
	}
	switch c.Catalog.Driver {
	case DriverSQLite, DriverPostgres, DriverSQLServer:
		if c.Catalog.DSN == "" {
			add("catalog.dsn", "required for driver %s", c.Catalog.Driver)
		}
	case DriverYAML:
		if c.Catalog.File == "" {
			add("catalog.file", "required for driver yaml")
		}
	default:
		add("catalog.driver", "%q is not one of sqlite, postgres, sqlserver, yaml", c.Catalog.Driver)
	}
	if len(c.Shards) == 0 {
		add("shards", "at least one shard is required")
	}
	seen := map[string]bool{}
	for i, s := range c.Shards {
		key := fmt.Sprintf("shards[%d]", i)
		switch {
		case !store.ValidIdentifier(s.Name) || strings.Contains(s.Name, "."):
			add(key+".name", "%q must be a plain name (letters, digits, _)", s.Name)
		case seen[s.Name]:
			add(key+".name", "%q is defined twice", s.Name)
		}
		seen[s.Name] = true
		if s.Driver != DriverSQLite && s.Driver != DriverPostgres && s.Driver != DriverSQLServer {
			add(key+".driver", "%q is not one of sqlite, postgres, sqlserver", s.Driver)
		}
		if s.DSN == "" {
			add(key+".dsn", "required")
		}
		if s.MaxConns < 0 {
			add(key+".max_conns", "must not be negative")
		}
	}
	switch c.Bus.Driver {
	case DriverNATS:
	case DriverServiceBus:
		sb := c.Bus.ServiceBus
		switch {
		case sb.ConnectionString == "" && sb.Namespace == "":
			add("bus.servicebus.connection_string", "a connection string or bus.servicebus.namespace is required")
		case sb.ConnectionString != "" && sb.Namespace != "":
			add("bus.servicebus.namespace", "give a connection string or a namespace, not both")
		}
	default:
		add("bus.driver", "%q is not one of nats, servicebus", c.Bus.Driver)
	}
	if c.Bus.NATS.Embedded.Listen && (c.Bus.NATS.Embedded.Port < 0 || c.Bus.NATS.Embedded.Port > 65535) {
		add("bus.nats.embedded.port", "%d is not a port", c.Bus.NATS.Embedded.Port)
	}
	positive := func(key string, d time.Duration) {
		if d <= 0 {
			add(key, "must be a positive duration")
		}
	}
	positive("bus.duplicate_window", c.Bus.DuplicateWindow)
	positive("bus.lock_duration", c.Bus.LockDuration)
	positive("publisher.interval", c.Publisher.Interval)
	positive("publisher.stuck_after", c.Publisher.StuckAfter)
	positive("publisher.reconcile_after", c.Publisher.ReconcileAfter)
	positive("publisher.watermark_lag", c.Publisher.WatermarkLag)
	if c.Publisher.FullSweepEvery < c.Publisher.Interval {
		add("publisher.full_sweep_every", "must be at least publisher.interval (%s)", c.Publisher.Interval)
	}
	positive("biller_consumer.time_budget", c.BillerConsumer.TimeBudget)
	positive("biller_consumer.retry_delay", c.BillerConsumer.RetryDelay)
	positive("item_consumer.lease", c.ItemConsumer.Lease)
	positive("item_consumer.retry_initial", c.ItemConsumer.RetryInitial)
	positive("cis.timeout", c.CIS.Timeout)
	positive("cis.backoff_initial", c.CIS.BackoffInitial)
	if c.Publisher.LeaseTTL <= c.Publisher.Interval {
		add("publisher.lease_ttl", "must be longer than publisher.interval (%s)", c.Publisher.Interval)
	}
	if c.Publisher.RescueBatch <= 0 {
		add("publisher.rescue_batch", "must be positive")
	}
	if c.BillerConsumer.Concurrency <= 0 {
		add("biller_consumer.concurrency", "must be positive")
	}
	if c.BillerConsumer.Batch <= 0 {
		add("biller_consumer.batch", "must be positive")
	}
	if c.BillerConsumer.MaxItemsPerMessage < c.BillerConsumer.Batch {
		add("biller_consumer.max_items_per_message", "must be at least biller_consumer.batch (%d)", c.BillerConsumer.Batch)
	}
	if c.BillerConsumer.TimeBudget >= c.Bus.LockDuration*10 {
		add("biller_consumer.time_budget", "must be well under 10 × bus.lock_duration")
	}
	if c.ItemConsumer.Concurrency <= 0 {
		add("item_consumer.concurrency", "must be positive")
	}
	if c.ItemConsumer.Batch <= 0 {
		add("item_consumer.batch", "must be positive")
	}
	if c.ItemConsumer.MaxAttempts <= 0 {
		add("item_consumer.max_attempts", "must be positive")
	}
	if c.Bus.MaxDeliveries <= c.ItemConsumer.MaxAttempts {
		add("bus.max_deliveries", "must be greater than item_consumer.max_attempts (%d): every retry is a redelivery", c.ItemConsumer.MaxAttempts)
	}
	if c.ItemConsumer.RetryMax < c.ItemConsumer.RetryInitial {
		add("item_consumer.retry_max", "must be at least item_consumer.retry_initial")
	}
	if budget := c.CIS.Timeout * time.Duration(c.CIS.Retries+1); budget >= c.ItemConsumer.Lease*3/4 {
		add("item_consumer.lease", "must exceed 4/3 × cis.timeout × (cis.retries+1) = %s, so a worker finishes inside its lease", budget*4/3)
	}
	if c.CIS.Retries < 0 {
		add("cis.retries", "must not be negative")
	}
	if c.CIS.BackoffMax < c.CIS.BackoffInitial {
		add("cis.backoff_max", "must be at least cis.backoff_initial")
	}
	if c.CIS.RatePerSecond < 0 {
		add("cis.rate_per_second", "must not be negative")
	}
	if c.CIS.MaxConcurrent <= 0 {
		add("cis.max_concurrent", "must be positive")
	}
	if c.CIS.BreakerFailures <= 0 {
		add("cis.breaker_failures", "must be positive")
	}
	positive("cis.breaker_open_for", c.CIS.BreakerOpenFor)
	if _, err := c.Registry(); err != nil {
		add("item_types", "%v", err)
	}
	if c.Tracing.SampleRatio < 0 || c.Tracing.SampleRatio > 1 {
		add("tracing.sample_ratio", "%v is not between 0 and 1", c.Tracing.SampleRatio)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		add("log.format", "%q is not one of json, text", c.Log.Format)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid config: %w", errors.Join(errs...))
	}
	return nil
}

// Registry builds the item type registry: the configured types, or the built-in ones.
func (c Config) Registry() (*items.Registry, error) {
	if len(c.ItemTypes) == 0 {
		return items.NewRegistry(items.Builtin()...)
	}
	types := make([]items.Type, 0, len(c.ItemTypes))
	for i, t := range c.ItemTypes {
		m, ok := items.Mappings[t.Mapping]
		if !ok {
			return nil, fmt.Errorf("[%d].mapping: %q is not one of payment, paperless, passthrough", i, t.Mapping)
		}
		types = append(types, items.Type{
			Name: t.Name, Topic: t.Topic, CISPath: t.CISPath, Map: m,
			Source: store.Source{
				ItemType: t.Name, Table: t.Source.Table, KeyColumn: t.Source.KeyColumn,
				BillerColumn: t.Source.BillerColumn, CreatedAtColumn: t.Source.CreatedAtColumn,
				TypeColumn: t.Source.TypeColumn, TypeValue: t.Source.TypeValue, EnrichQuery: t.Source.EnrichQuery,
			},
		})
	}
	r, err := items.NewRegistry(types...)
	if err != nil {
		return nil, err
	}
	return r, nil
}
