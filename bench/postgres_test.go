package bench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPostgresEnvStartsFromACheckpoint: opening a run's environment asks
// the server for a checkpoint (pg_stat_bgwriter counts it as requested).
func TestPostgresEnvStartsFromACheckpoint(t *testing.T) {
	dsn := os.Getenv("DATAPUMP_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Skip("set DATAPUMP_TEST_POSTGRES_DSN to run")
	}
	ctx := context.Background()
	requested := func(env *postgresEnv) int64 {
		var n int64
		require.NoError(t, env.pool.QueryRow(ctx, `SELECT checkpoints_req FROM pg_stat_bgwriter`).Scan(&n))
		return n
	}
	first, err := newPostgresEnv(ctx, dsn, "")
	require.NoError(t, err)
	defer first.Close()
	before := requested(first)

	second, err := newPostgresEnv(ctx, dsn, "")
	require.NoError(t, err)
	defer second.Close()
	// The checkpointer reports its counts just after it wakes the backend
	// that asked, so the count may trail the statement by a moment.
	require.Eventually(t, func() bool { return requested(second) > before }, 10*time.Second, 10*time.Millisecond,
		"the second environment's checkpoint is counted")
}
