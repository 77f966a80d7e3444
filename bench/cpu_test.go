package bench

import (
	"context"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/procfs"
	"github.com/stretchr/testify/require"
)

// TestSumCPUCountsEachServerProcessAndWhatItsPostmasterReaped: every
// postgres and nats-server process counts with its own time; a
// postmaster (a postgres process whose parent is not one) adds the time of
// the backends it has reaped, a backend does not add its children's; any
// other process is left out.
func TestSumCPUCountsEachServerProcessAndWhatItsPostmasterReaped(t *testing.T) {
	stats := []procfs.ProcStat{
		{PID: 1, Comm: "init", UTime: 900, STime: 900},
		{PID: 10, PPID: 1, Comm: postgresComm, UTime: 100, STime: 50, CUTime: 300, CSTime: 200},
		{PID: 11, PPID: 10, Comm: postgresComm, UTime: 20, STime: 5, CUTime: 7000, CSTime: 7000},
		{PID: 12, PPID: 10, Comm: postgresComm, UTime: 30, STime: 0},
		{PID: 20, PPID: 1, Comm: natsComm, UTime: 250, STime: 150},
		{PID: 30, PPID: 1, Comm: "datapump", UTime: 5000, STime: 5000},
	}
	got := sumCPU(stats)
	require.InDelta(t, 1.5+5.0+0.25+0.3, got.postgres, 1e-9, "postmaster 1.5 s and 5 s reaped, backends 0.25 s and 0.3 s")
	require.InDelta(t, 4.0, got.nats, 1e-9)
	require.Zero(t, got.process, "this process is read apart")
}

// TestCPUBetweenIsTheDifferenceAndItsShareOfTheCores: a phase's CPU is
// the difference of two readings, and Busy is their total over the
// phase's time on every core.
func TestCPUBetweenIsTheDifferenceAndItsShareOfTheCores(t *testing.T) {
	start := cpuTimes{process: 10, postgres: 100, nats: 5}
	end := cpuTimes{process: 13, postgres: 104, nats: 6}
	c := cpuBetween(start, end, 4*time.Second, 2)
	require.Equal(t, CPU{ProcessS: 3, PostgresS: 4, NATSS: 1, TotalS: 8, Busy: 1}, *c)
	require.Zero(t, cpuBetween(start, end, 0, 2).Busy, "a phase of no time has no share")
}

// TestCPUMeterSeesThisProcessWork: a meter around work in this process
// reports that process's time.
func TestCPUMeterSeesThisProcessWork(t *testing.T) {
	m := startCPU()
	require.True(t, m.ok, "/proc is readable here")
	var c *CPU
	burnUntil(t, func() bool {
		c = m.stop(time.Second)
		return c.ProcessS > 0
	}, func() {
		x := 0
		for i := range 10_000_000 {
			x += i % 7
		}
		_ = x
	})
	require.InDelta(t, c.ProcessS+c.PostgresS+c.NATSS, c.TotalS, 1e-9)
}

// TestCPUMeterSeesTheLocalServersWork: work given to the PostgreSQL and
// NATS servers of this machine shows as theirs.
func TestCPUMeterSeesTheLocalServersWork(t *testing.T) {
	dsn, natsURL := os.Getenv("DATAPUMP_TEST_POSTGRES_DSN"), os.Getenv("DATAPUMP_TEST_NATS_URL")
	if dsn == "" || natsURL == "" {
		t.Skip("set DATAPUMP_TEST_POSTGRES_DSN and DATAPUMP_TEST_NATS_URL (servers on this machine) to run")
	}
	ctx := context.Background()
	pgCfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	natsAddr, err := url.Parse(natsURL)
	require.NoError(t, err)
	if !onThisMachine(pgCfg.Host) || !onThisMachine(natsAddr.Hostname()) {
		t.Skip("the servers are on another host, where this machine's /proc cannot see them")
	}
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer conn.Close(ctx)
	nc, err := nats.Connect(natsURL)
	require.NoError(t, err)
	defer nc.Close()

	m := startCPU()
	burnUntil(t, func() bool { return m.stop(time.Second).PostgresS > 0 }, func() {
		var n int64
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM generate_series(1, 2000000)`).Scan(&n))
	})
	m = startCPU()
	burnUntil(t, func() bool { return m.stop(time.Second).NATSS > 0 }, func() {
		for range 20_000 {
			require.NoError(t, nc.Publish("datapump.cpu-test", make([]byte, 256)))
		}
		require.NoError(t, nc.Flush())
	})
}

// onThisMachine reports whether host names this machine (a loopback
// address, localhost, or a Unix socket directory).
func onThisMachine(host string) bool {
	if host == "localhost" || strings.HasPrefix(host, "/") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// burnUntil does work until seen holds (a process's time is counted in
// ticks of 10 ms, so one round may not show), giving up after a minute.
func burnUntil(t *testing.T, seen func() bool, work func()) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !seen() {
		require.True(t, time.Now().Before(deadline), "the work never showed in the readings")
		work()
	}
}
