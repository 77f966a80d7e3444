package bench_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/bench"
)

func TestRunPumpEmbeddedDeliversEveryItemOnce(t *testing.T) {
	t.Parallel()
	opts := bench.DefaultOptions()
	opts.Items, opts.Billers, opts.Shards = 150, 5, 2
	opts.Concurrency = 8
	opts.Timeout = time.Minute
	res, err := bench.RunPump(context.Background(), opts)
	require.NoError(t, err)
	require.Equal(t, 150, res.Delivered)
	require.Zero(t, res.Duplicates)
	require.Equal(t, bench.BackendEmbedded, res.Backend)
	require.Positive(t, res.ItemsPerS)
	require.Positive(t, res.InsertToCIS.P99ms)
	// A backlog run says when its last item was Queued and how fast the
	// item consumers went after that; that item was delivered after it.
	require.NotNil(t, res.Front)
	require.Positive(t, res.Front.AllQueuedS)
	require.Less(t, res.Front.AllQueuedS, res.ElapsedS)
	require.Less(t, res.Front.DeliveredBefore, 150)
	require.Positive(t, res.Front.AfterItemsPerS)
	require.Nil(t, res.SmallBillersCreatedToQueued, "without a big biller there are no small billers to split out")
}

// TestRunPumpWithIntervalCISLatencyAndInsertRate: the settings a latency
// run uses reach the pump and the mock CIS, and the result says so; every
// item written while the jobs run is delivered once, and marked Processed
// no sooner than the CIS's delay after it was Queued.
func TestRunPumpWithIntervalCISLatencyAndInsertRate(t *testing.T) {
	t.Parallel()
	opts := bench.DefaultOptions()
	opts.Items, opts.Billers, opts.Shards = 60, 3, 1
	opts.Concurrency = 8
	opts.Timeout = time.Minute
	opts.Interval = 300 * time.Millisecond
	opts.CISLatency = 30 * time.Millisecond
	opts.InsertRate = 200
	res, err := bench.RunPump(context.Background(), opts)
	require.NoError(t, err)
	require.Equal(t, 60, res.Delivered)
	require.Zero(t, res.Duplicates)
	require.Equal(t, 300.0, res.IntervalMs)
	require.Equal(t, 30.0, res.CISLatencyMs)
	require.Equal(t, 200, res.InsertRate)
	require.GreaterOrEqual(t, res.QueuedToProcessed.P50ms, 30.0, "an item is Processed once the CIS has answered, after its delay")
	require.Nil(t, res.Front, "a run that writes its items as it goes has no backlog to split")
}

func postgresOptions(t *testing.T) bench.Options {
	t.Helper()
	dsn := os.Getenv("DATAPUMP_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Skip("set DATAPUMP_TEST_POSTGRES_DSN to run")
	}
	opts := bench.DefaultOptions()
	opts.PostgresDSN = dsn
	opts.Items, opts.Billers, opts.Shards = 120, 4, 2
	opts.Concurrency = 8
	opts.Timeout = time.Minute
	return opts
}

// postgresBackendOptions are postgresOptions on the postgres backend, with
// the NATS server it needs.
func postgresBackendOptions(t *testing.T) bench.Options {
	t.Helper()
	opts := postgresOptions(t)
	opts.NATSURL = os.Getenv("DATAPUMP_TEST_NATS_URL")
	if opts.NATSURL == "" {
		t.Skip("set DATAPUMP_TEST_NATS_URL to run")
	}
	opts.Backend = bench.BackendPostgres
	return opts
}

func TestRunPumpPostgresDeliversEveryItemOnce(t *testing.T) {
	t.Parallel()
	opts := postgresBackendOptions(t)
	res, err := bench.RunPump(context.Background(), opts)
	require.NoError(t, err)
	require.Equal(t, 120, res.Delivered)
	require.Zero(t, res.Duplicates)
	requireCPU(t, res.CPU)
}

// requireCPU: a timed phase reports where its CPU went (these tests run
// on Linux, where /proc can be read).
func requireCPU(t *testing.T, c *bench.CPU) {
	t.Helper()
	require.NotNil(t, c)
	require.Positive(t, c.ProcessS, "the phase ran in this process")
	require.InDelta(t, c.ProcessS+c.PostgresS+c.NATSS, c.TotalS, 1e-9)
	require.Positive(t, c.Busy)
}

func TestRunRiverDeliversEveryJobOnce(t *testing.T) {
	t.Parallel()
	opts := postgresOptions(t)
	res, err := bench.RunRiver(context.Background(), opts, bench.RiverTuned(opts))
	require.NoError(t, err)
	require.Equal(t, 120, res.Delivered)
	require.Zero(t, res.Duplicates)
	requireCPU(t, res.CPU)
}

func TestRunCeilingProcessesEveryItem(t *testing.T) {
	t.Parallel()
	res, err := bench.RunCeiling(context.Background(), postgresOptions(t))
	require.NoError(t, err)
	require.Equal(t, 120, res.Processed)
	requireCPU(t, res.CPU)
}

func TestRunPollingTimesEachHistory(t *testing.T) {
	t.Parallel()
	res, err := bench.RunPolling(context.Background(), postgresOptions(t), []int{100, 1000})
	require.NoError(t, err)
	require.Len(t, res.Points, 2)
	require.Equal(t, 1000, res.Points[1].History)
	require.Positive(t, res.ClaimRatio)
	require.Positive(t, res.PendingCountRatio)
}

func TestRunPumpWithBigBillerDeliversEveryItemOnce(t *testing.T) {
	t.Parallel()
	opts := bench.DefaultOptions()
	opts.Items, opts.Billers, opts.Shards = 60, 6, 2
	opts.BigBillerItems = 90
	opts.Concurrency = 8
	opts.Timeout = time.Minute
	res, err := bench.RunPump(context.Background(), opts)
	require.NoError(t, err)
	require.Equal(t, 150, res.Delivered)
	require.Zero(t, res.Duplicates)
	require.Positive(t, res.SmallBillersInsertToCIS.P99ms)
	require.NotNil(t, res.SmallBillersCreatedToQueued, "a run with a big biller splits the small billers' stages")
	require.NotNil(t, res.SmallBillersQueuedToProcessed)
	require.Positive(t, res.SmallBillersCreatedToQueued.P99ms)
	require.Positive(t, res.SmallBillersQueuedToProcessed.P99ms)
}

func TestRunScalingDeliversEveryItemOnceWithEachProcessCount(t *testing.T) {
	t.Parallel()
	opts := postgresBackendOptions(t)
	opts.Items = 150
	opts.Binary = buildDatapump(t)
	processes := []int{1, 2}
	res, err := bench.RunScaling(context.Background(), opts, processes)
	require.NoError(t, err)
	require.Len(t, res.Points, len(processes))
	for i, p := range res.Points {
		require.Equal(t, processes[i], p.Processes)
		require.Equal(t, 150, p.Delivered, "processes %d", p.Processes)
		require.Zero(t, p.Duplicates, "processes %d", p.Processes)
		requireCPU(t, p.CPU)
	}
	require.Equal(t, 1, res.BaseProcesses)
}

func TestRunScalingRefusesTheEmbeddedBackend(t *testing.T) {
	t.Parallel()
	opts := bench.DefaultOptions()
	opts.Binary = "datapump"
	_, err := bench.RunScaling(context.Background(), opts, []int{1})
	require.ErrorContains(t, err, bench.BackendPostgres)
}

// buildDatapump builds the datapump command for the item consumer processes.
func buildDatapump(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "datapump")
	out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "github.com/datapump/datapump/cmd/datapump").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}
