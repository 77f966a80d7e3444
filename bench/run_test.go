package bench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPumpRunKeepsItsDirectoryOnlyWhenAsked: Close removes a run's
// directory (its databases, configuration and process logs) unless the
// run was told to keep it, as a scaling point that saw a duplicate is.
func TestPumpRunKeepsItsDirectoryOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	open := func() *pumpRun {
		opts := DefaultOptions()
		opts.Items, opts.Billers, opts.Shards, opts.Concurrency = 10, 2, 1, 4
		opts.Timeout = time.Minute
		require.NoError(t, opts.normalize())
		r, err := openPumpRun(context.Background(), opts)
		require.NoError(t, err)
		require.DirExists(t, r.dir)
		return r
	}

	r := open()
	r.Close()
	require.NoDirExists(t, r.dir, "removed by default")

	r = open()
	r.keepDir = true
	r.Close()
	require.DirExists(t, r.dir, "kept when asked")
	require.NoError(t, os.RemoveAll(r.dir))
}
