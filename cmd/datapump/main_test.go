package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), func() {}, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDemoSummaryJSON(t *testing.T) {
	t.Parallel()
	code, out, errOut := runCLI(t, "demo", "--billers", "10", "--items", "600", "--summary-json")
	require.Equal(t, exitOK, code, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sum struct {
		Delivered, Duplicates, Lost, UntouchedOff, PollItems, OffItems int
	}
	last := lines[len(lines)-1]
	require.NoError(t, json.Unmarshal([]byte(strings.NewReplacer("untouched_off", "UntouchedOff", "poll_items", "PollItems", "off_items", "OffItems").Replace(last)), &sum), last)
	require.Positive(t, sum.PollItems)
	require.Equal(t, sum.PollItems, sum.Delivered)
	require.Zero(t, sum.Duplicates)
	require.Zero(t, sum.Lost)
	require.Equal(t, sum.OffItems, sum.UntouchedOff)
	require.Contains(t, out, "Summary")
	require.Contains(t, last, `"p99_ms"`)
}

func TestBadInputExitsWithTwoNamingTheKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("catalog:\n  driver: sqlite\n  dsn: c.db\nshards:\n  - name: s1\n    driver: oracle\n    dsn: x\n"), 0o600))
	code, _, errOut := runCLI(t, "run", "--config", bad)
	require.Equal(t, exitBadInput, code)
	require.Contains(t, errOut, "shards[0].driver")

	code, _, errOut = runCLI(t, "run", "--config", bad, "--jobs", "publisher,cooker")
	require.Equal(t, exitBadInput, code)
	require.Contains(t, errOut, "cooker")

	code, _, _ = runCLI(t, "no-such-command")
	require.Equal(t, exitBadInput, code)

	code, _, errOut = runCLI(t, "billers", "set-mode", "b1", "sideways", "--config", bad)
	require.Equal(t, exitBadInput, code)
	require.Contains(t, errOut, "sideways")

	code, _, errOut = runCLI(t, "demo", "--items", "0")
	require.Equal(t, exitBadInput, code)
	require.Contains(t, errOut, "--items")
}

func TestMigrateAndBillersAgainstSQLite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(strings.ReplaceAll(`owner: t
catalog: {driver: sqlite, dsn: DIR/catalog.db}
shards:
  - {name: shard1, driver: sqlite, dsn: DIR/shard1.db}
log: {level: error}
`, "DIR", dir)), 0o600))
	code, out, errOut := runCLI(t, "migrate", "--config", cfgPath)
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "migrated 1 shard")
	code, _, errOut = runCLI(t, "migrate", "--config", cfgPath)
	require.Equal(t, exitOK, code, "migrate twice: %s", errOut)

	code, _, errOut = runCLI(t, "billers", "set-mode", "nobody", "poll", "--config", cfgPath)
	require.Equal(t, exitBadInput, code)
	require.Contains(t, errOut, "not found")

	code, out, errOut = runCLI(t, "billers", "list", "--json", "--config", cfgPath)
	require.Equal(t, exitOK, code, errOut)
	require.JSONEq(t, "[]", strings.TrimSpace(out))
}

func TestBenchRepeatRefusesBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--repeat", "0", "--river"}, "--repeat must be at least 1"},
		{[]string{"--repeat", "3"}, "--repeat needs --river or --ceiling"},
		{[]string{"--repeat", "2", "--ceiling", "--cpuprofile", "cpu.pprof"}, "--repeat: profile one run at a time"},
	} {
		code, _, errOut := runCLI(t, append([]string{"bench"}, tc.args...)...)
		require.Equal(t, exitBadInput, code, "%v: %s", tc.args, errOut)
		require.Contains(t, errOut, tc.wantErr, tc.args)
	}
}

func TestBenchScalingRefusesBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--backend", "embedded"}, "--backend postgres only"},
		{[]string{"--processes", "1,0"}, "--processes"},
		{[]string{"--processes", "2,2"}, "--processes"},
		{[]string{"--fairness"}, "--fairness"},
	} {
		code, _, errOut := runCLI(t, append([]string{"bench", "--scaling"}, tc.args...)...)
		require.Equal(t, exitBadInput, code, "%v: %s", tc.args, errOut)
		require.Contains(t, errOut, tc.wantErr, tc.args)
	}
}
