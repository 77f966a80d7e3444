package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestProvisionDryRunAzureExample(t *testing.T) {
	t.Parallel()
	code, out, errOut := runCLI(t, "provision", "--dry-run", "--config", "../../examples/azure.yaml")
	require.Equal(t, exitOK, code, errOut)
	for _, want := range []string{
		"topic", "data-pump-data-created", "data-pump-payment-created", "data-pump-paperless-registration-created",
		"duplicate detection on, window 10m0s",
		"subscription", "data-pump-data-created/biller-consumer", "data-pump-payment-created/item-consumer",
		"max deliveries 20, lock duration 30s",
	} {
		require.Contains(t, out, want)
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	require.NoError(t, os.WriteFile(p, []byte(strings.ReplaceAll(body, "DIR", dir)), 0o600))
	return p
}

// provision against NATS creates everything once; a second run changes nothing.
func TestProvisionNATSIsIdempotent(t *testing.T) {
	t.Parallel()
	// An embedded server keeping its state in store_dir, so the second run
	// sees what the first created (the adapter's own suite checks the
	// same against the external server).
	bus := "bus:\n  nats:\n    embedded:\n      store_dir: DIR/nats\n"
	cfg := writeConfig(t, `catalog: {driver: sqlite, dsn: DIR/c.db}
shards: [{name: s1, driver: sqlite, dsn: DIR/s1.db}]
log: {level: error}
`+bus)
	code, out, errOut := runCLI(t, "provision", "--config", cfg)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, 6, strings.Count(out, " created\n"), out)
	code, out, errOut = runCLI(t, "provision", "--config", cfg)
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, 6, strings.Count(out, " unchanged\n"), out)
	require.NotContains(t, out, " created\n")
}

func TestMalformedSecretsFailWithoutPrintingThem(t *testing.T) {
	t.Parallel()
	sb := writeConfig(t, `catalog: {driver: sqlite, dsn: DIR/c.db}
shards: [{name: s1, driver: sqlite, dsn: DIR/s1.db}]
bus:
  driver: servicebus
  servicebus:
    connection_string: "Endpoint=not a url;SharedAccessKeyName=root;SharedAccessKey=TopSecretKey123"
`)
	code, out, errOut := runCLI(t, "provision", "--config", sb)
	require.NotEqual(t, exitOK, code)
	require.NotContains(t, out+errOut, "TopSecretKey123")
	require.Contains(t, errOut, "connection string")

	pg := writeConfig(t, `catalog: {driver: postgres, dsn: "postgres://postgres:Hunter2Secret@127.0.0.1:notaport/test"}
shards: [{name: s1, driver: postgres, dsn: "postgres://postgres:Hunter2Secret@127.0.0.1:notaport/test"}]
`)
	code, out, errOut = runCLI(t, "migrate", "--config", pg)
	require.NotEqual(t, exitOK, code)
	require.NotContains(t, out+errOut, "Hunter2Secret")
}

func TestMalformedSQLServerDSNFailsWithoutPrintingIt(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, `catalog: {driver: sqlserver, dsn: "sqlserver://sa:Sup3rSecretPw@db.example:notaport?database=x"}
shards: [{name: s1, driver: sqlserver, dsn: "sqlserver://sa:Sup3rSecretPw@db.example:notaport?database=x"}]
`)
	code, out, errOut := runCLI(t, "migrate", "--config", cfg)
	require.NotEqual(t, exitOK, code)
	require.NotContains(t, out+errOut, "Sup3rSecretPw")
}

func TestRunRefusesUnknownItemType(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, `catalog: {driver: sqlite, dsn: DIR/c.db}
shards: [{name: s1, driver: sqlite, dsn: DIR/s1.db}]
log: {level: error}
`)
	code, _, errOut := runCLI(t, "run", "--config", cfg, "--jobs", "item-consumer", "--item-types", "payment,refund")
	require.Equal(t, exitBadInput, code)
	require.Contains(t, errOut, "refund")
}
