package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const validYAML = `
owner: pod-1
catalog:
  driver: postgres
  dsn: postgres://postgres:${PGPASS}@127.0.0.1:5432/test
shards:
  - name: shard1
    driver: postgres
    dsn: postgres://postgres:${PGPASS}@127.0.0.1:5432/test
bus:
  nats:
    url: nats://127.0.0.1:4222
publisher:
  interval: 2s
`

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "datapump.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestLoadFileEnvAndDefaults(t *testing.T) {
	t.Parallel()
	p := writeFile(t, validYAML)
	cfg, err := Load(p, []string{"PGPASS=s3cret", "DATAPUMP_BUS_NATS_URL=nats://other:4222", "DATAPUMP_ITEM_CONSUMER_CONCURRENCY=7", "DATAPUMP_TEST_POSTGRES_DSN=ignored"})
	require.NoError(t, err)
	require.Equal(t, "pod-1", cfg.Owner)
	require.Equal(t, "postgres://postgres:s3cret@127.0.0.1:5432/test", cfg.Shards[0].DSN)
	require.Equal(t, "nats://other:4222", cfg.Bus.NATS.URL, "env overrides the file")
	require.Equal(t, 7, cfg.ItemConsumer.Concurrency)
	require.Equal(t, 2*time.Second, cfg.Publisher.Interval, "file overrides the default")
	require.Equal(t, Default().Publisher.StuckAfter, cfg.Publisher.StuckAfter, "default kept")
	reg, err := cfg.Registry()
	require.NoError(t, err)
	require.Len(t, reg.Types(), 2)
}

func TestLoadRefusesBadInputNamingTheKey(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		yaml    string
		env     []string
		wantErr string
	}{
		{"unknown key", validYAML + "bogus: 1\n", []string{"PGPASS=x"}, "bogus"},
		{"bad driver", validYAML, []string{"PGPASS=x", "DATAPUMP_BUS_DRIVER=kafka"}, "bus.driver"},
		{"bad duration", validYAML, []string{"PGPASS=x", "DATAPUMP_PUBLISHER_INTERVAL=soon"}, "interval"},
		{"lease ttl", validYAML, []string{"PGPASS=x", "DATAPUMP_PUBLISHER_LEASE_TTL=1s"}, "publisher.lease_ttl"},
		{"missing secret", validYAML, nil, "PGPASS"},
		{"unknown env", validYAML, []string{"PGPASS=x", "DATAPUMP_BUS_NATZ_URL=x"}, "DATAPUMP_BUS_NATZ_URL"},
		{"max deliveries", validYAML, []string{"PGPASS=x", "DATAPUMP_BUS_MAX_DELIVERIES=3"}, "bus.max_deliveries"},
		{"no shards", "catalog:\n  driver: yaml\n  file: b.yaml\n", []string{}, "shards"},
		{"bad shard name", "catalog:\n  driver: yaml\n  file: b.yaml\nshards:\n  - name: 'a;drop'\n    driver: sqlite\n    dsn: x.db\n", []string{}, "shards[0].name"},
		{"bad item type column", validYAML + "item_types:\n  - name: refund\n    topic: t\n    cis_path: /r\n    mapping: passthrough\n    source: {table: refunds, key_column: 'id; drop', biller_column: b, created_at_column: c, enrich_query: 'select 1 where id = :id'}\n", []string{"PGPASS=x"}, "key_column"},
		{"bad log level", validYAML + "log:\n  level: loud\n", []string{"PGPASS=x"}, "log.level"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := tc.env
			if env == nil {
				env = []string{}
			}
			_, err := Load(writeFile(t, tc.yaml), env)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestLoadErrorNeverPrintsSecret(t *testing.T) {
	t.Parallel()
	_, err := Load(writeFile(t, validYAML+"log:\n  level: loud\n"), []string{"PGPASS=topsecret"})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "topsecret")
}

func TestLoadExpandsOnlyValuesAndExampleLoads(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "# a comment may mention ${NOT_SET}\n"+validYAML)
	_, err := Load(p, []string{"PGPASS=x"})
	require.NoError(t, err)
	cfg, err := Load("../../examples/postgres.yaml", []string{})
	require.NoError(t, err)
	require.Equal(t, "nats://127.0.0.1:4222", cfg.Bus.NATS.URL)
}

func TestMarshalLoadsBackToTheSameConfig(t *testing.T) {
	t.Parallel()
	cfg := Default()
	cfg.Owner = "bench-items-1"
	cfg.Catalog = CatalogConfig{Driver: DriverPostgres, DSN: "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&search_path=run_cat"}
	cfg.Shards = []ShardConfig{
		{Name: "shard1", Driver: DriverPostgres, DSN: "postgres://postgres@127.0.0.1:5432/test?search_path=run_s1", MaxConns: 16},
		{Name: "shard2", Driver: DriverPostgres, DSN: "postgres://postgres@127.0.0.1:5432/test?search_path=run_s2", MaxConns: 16},
	}
	cfg.Bus.NATS.URL = "nats://127.0.0.1:4222"
	cfg.Bus.TopicPrefix = "run-"
	cfg.Publisher.Interval = 500 * time.Millisecond
	cfg.ItemConsumer.Concurrency = 8
	cfg.CIS.RatePerSecond = 2.5
	cfg.HTTP.Addr = "127.0.0.1:9100"
	cfg.ItemTypes = []ItemTypeConfig{{
		Name: "refund", Topic: "refunds", CISPath: "/refunds", Mapping: "passthrough",
		Source: SourceConfig{Table: "refunds", KeyColumn: "id", BillerColumn: "biller_id", CreatedAtColumn: "created_at", EnrichQuery: "select id from refunds where id = :id"},
	}}
	require.NoError(t, cfg.Validate())
	raw, err := Marshal(cfg)
	require.NoError(t, err)
	got, err := Load(writeFile(t, string(raw)), []string{})
	require.NoError(t, err, string(raw))
	require.Equal(t, cfg, got)
}
