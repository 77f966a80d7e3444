package bench_test

import (
	"context"
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
}
