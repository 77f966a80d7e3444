package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/bench"
)

func TestPrintPumpResultSaysWhereTheFrontEnded(t *testing.T) {
	t.Parallel()
	r := bench.PumpResult{Backend: bench.BackendPostgres, Items: 100000, Throughput: bench.Throughput{Delivered: 100000, ElapsedS: 9.5, ItemsPerS: 10526}}
	var out bytes.Buffer
	printPumpResult(&out, r)
	require.NotContains(t, out.String(), "last item Queued", "a run without the split prints none")

	r.Front = &bench.Front{AllQueuedS: 3.62, DeliveredBefore: 6046, AfterItemsPerS: 12203}
	out.Reset()
	printPumpResult(&out, r)
	require.Regexp(t, `last item Queued +after 3\.62 s, 6046 delivered by then`, out.String())
	require.Regexp(t, `item consumers alone +12203 items/s from then on`, out.String())
}

// TestPrintedResultsSayWhereTheCPUWent: each timed phase's table says
// what its CPU was spent on, when it could be read, and nothing when not.
func TestPrintedResultsSayWhereTheCPUWent(t *testing.T) {
	t.Parallel()
	cpu := &bench.CPU{ProcessS: 16.4, PostgresS: 13.4, NATSS: 3.4, TotalS: 33.2, Busy: 0.96}
	line := `CPU used +33\.2 s: benchmark processes 16\.4 s, PostgreSQL 13\.4 s, NATS server 3\.4 s \(96 % of all cores\)`
	var out bytes.Buffer
	printPumpResult(&out, bench.PumpResult{Throughput: bench.Throughput{CPU: cpu}})
	require.Regexp(t, line, out.String())
	out.Reset()
	printRiverResult(&out, bench.RiverResult{CPU: cpu})
	require.Regexp(t, line, out.String())
	out.Reset()
	printCeilingResult(&out, bench.CeilingResult{CPU: cpu})
	require.Regexp(t, line, out.String())
	out.Reset()
	printCeilingResult(&out, bench.CeilingResult{})
	require.NotContains(t, out.String(), "CPU used")
	out.Reset()
	printScalingResult(&out, bench.ScalingResult{Points: []bench.ScalingPoint{{Processes: 1, Throughput: bench.Throughput{CPU: cpu}}, {Processes: 2}}})
	require.Regexp(t, `\n1 .*33\.2 s \(16\.4/13\.4/3\.4\)\n2 .* -\n`, out.String())
}

// TestScalingDuplicatesNameTheKeptLogs: a scaling run without duplicates
// passes; one with them fails, counting them and naming where the logs of
// the points that had them were kept.
func TestScalingDuplicatesNameTheKeptLogs(t *testing.T) {
	t.Parallel()
	res := bench.ScalingResult{Points: []bench.ScalingPoint{
		{Processes: 1, Throughput: bench.Throughput{Delivered: 100}},
		{Processes: 2, Throughput: bench.Throughput{Delivered: 100}},
	}}
	require.NoError(t, scalingDuplicates(res))

	res.Points[1].Duplicates, res.Points[1].Resends, res.Points[1].LogsKept = 5, 3, "/tmp/datapump-bench-1"
	res.Points[1].DuplicateAfterMinMs, res.Points[1].DuplicateAfterMaxMs = 2013, 4420
	res.Points = append(res.Points, bench.ScalingPoint{Processes: 4, Throughput: bench.Throughput{Duplicates: 2, DuplicateAfterMinMs: 2500, DuplicateAfterMaxMs: 2600}, LogsKept: "/tmp/datapump-bench-2"})
	err := scalingDuplicates(res)
	require.EqualError(t, err, "bench: the CIS saw 7 duplicates (3 of them resends within one CIS call; "+
		"2 processes: 2013 to 4420 ms after the item's first acceptance; 4 processes: 2500 to 2600 ms after the item's first acceptance); "+
		"the item consumer processes' logs are kept in /tmp/datapump-bench-1, /tmp/datapump-bench-2")
}

// TestPrintPumpResultSplitsTheSmallBillersStages: a run with a big
// biller prints the small billers' insert→CIS and both of their stages.
func TestPrintPumpResultSplitsTheSmallBillersStages(t *testing.T) {
	t.Parallel()
	r := bench.PumpResult{BigBillerItems: 50000, SmallBillersInsertToCIS: bench.Latency{P99ms: 2500}}
	var out bytes.Buffer
	printPumpResult(&out, r)
	require.Regexp(t, `insert→CIS, small billers +0\.0 ms +0\.0 ms +2500\.0 ms`, out.String())
	require.NotContains(t, out.String(), "created→Queued, small billers", "no split was measured")
	r.SmallBillersCreatedToQueued = &bench.Latency{P50ms: 900, P95ms: 1500, P99ms: 1700}
	r.SmallBillersQueuedToProcessed = &bench.Latency{P50ms: 60, P95ms: 700, P99ms: 900}
	out.Reset()
	printPumpResult(&out, r)
	require.Regexp(t, `created→Queued, small billers +900\.0 ms +1500\.0 ms +1700\.0 ms`, out.String())
	require.Regexp(t, `Queued→Processed, small billers +60\.0 ms +700\.0 ms +900\.0 ms`, out.String())
}

// TestPrintPumpResultSaysWhenDuplicatesCame: a run with duplicates says
// how long after their item's first acceptance they came; one without
// says nothing of it.
func TestPrintPumpResultSaysWhenDuplicatesCame(t *testing.T) {
	t.Parallel()
	r := bench.PumpResult{Throughput: bench.Throughput{Delivered: 100}}
	var out bytes.Buffer
	printPumpResult(&out, r)
	require.NotContains(t, out.String(), "duplicates came")
	r.Duplicates, r.Resends, r.DuplicateAfterMinMs, r.DuplicateAfterMaxMs = 3, 2, 2104, 2231
	out.Reset()
	printPumpResult(&out, r)
	require.Regexp(t, `duplicates came +2104 to 2231 ms after the item's first acceptance`, out.String())
}

// TestBenchRepeatEndsWithEveryRunsRatioAndTheirMedian: a repeated run
// with the ceiling runs the pump and the ceiling that many times and its
// last line gathers their ratios (PostgreSQL and NATS).
func TestBenchRepeatEndsWithEveryRunsRatioAndTheirMedian(t *testing.T) {
	t.Parallel()
	dsn, natsURL := os.Getenv("DATAPUMP_TEST_POSTGRES_DSN"), os.Getenv("DATAPUMP_TEST_NATS_URL")
	if dsn == "" || natsURL == "" {
		t.Skip("set DATAPUMP_TEST_POSTGRES_DSN and DATAPUMP_TEST_NATS_URL to run")
	}
	code, out, errOut := runCLI(t, "bench", "--backend", "postgres", "--pg-dsn", dsn, "--nats-url", natsURL,
		"--items", "120", "--billers", "4", "--concurrency", "8", "--ceiling", "--repeat", "2")
	require.Equal(t, exitOK, code, errOut)
	require.Equal(t, 2, strings.Count(out, "raw SQL ceiling ("), "two ceiling runs")
	require.Contains(t, out, "run 2 of 2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last bench.Repeated
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &last))
	require.Equal(t, 2, last.Runs)
	require.Len(t, last.CeilingRatios, 2)
	require.Positive(t, last.MedianCeilingRatio)
	require.Empty(t, last.Ratios, "River did not run")
}
