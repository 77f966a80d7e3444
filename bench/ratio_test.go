package bench_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/bench"
)

// TestRiverRatioCarriesRiversCeilingShareOnlyWhenTheCeilingRan: the last
// line of a River run compares the pump with both River runs; with the
// ceiling measured in the same run it also gives River tuned's share of
// it, and without, the JSON has no such fields.
func TestRiverRatioCarriesRiversCeilingShareOnlyWhenTheCeilingRan(t *testing.T) {
	t.Parallel()
	defaults, tuned := bench.RiverResult{JobsPerS: 4000}, bench.RiverResult{JobsPerS: 5000}

	r := bench.NewRiverRatio(4500, defaults, tuned, 12500)
	require.Equal(t, bench.RiverRatio{
		PumpItemsPerS: 4500, RiverJobsPerS: 5000, Ratio: 0.9,
		RiverDefaultJobsPerS: 4000, RatioVsRiverDefaults: 1.125,
		CeilingItemsPerS: 12500, RiverCeilingRatio: 0.4,
	}, r)

	line, err := json.Marshal(bench.NewRiverRatio(4500, defaults, tuned, 0))
	require.NoError(t, err)
	require.JSONEq(t, `{"pump_items_per_s":4500,"river_jobs_per_s":5000,"ratio":0.9,"river_default_jobs_per_s":4000,"ratio_vs_river_defaults":1.125}`, string(line))
	require.Zero(t, bench.Ratio(1, 0), "nothing measured gives no ratio")
}
