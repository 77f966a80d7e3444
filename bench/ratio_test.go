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

// TestRepeatedGathersEachRunsRatiosAndTheirMedians: a repeated run's last
// line keeps every repetition's ratios in order and the median of each
// kind (the middle one of an odd count, the mean of the two middle ones
// of an even count); an anchor that did not run leaves its fields out.
func TestRepeatedGathersEachRunsRatiosAndTheirMedians(t *testing.T) {
	t.Parallel()
	rivers := []bench.RiverRatio{
		{Ratio: 1.10, CeilingItemsPerS: 12000, RiverCeilingRatio: 0.40},
		{Ratio: 0.90, CeilingItemsPerS: 11000, RiverCeilingRatio: 0.44},
		{Ratio: 1.00, CeilingItemsPerS: 12500, RiverCeilingRatio: 0.42},
	}
	ceilings := []bench.CeilingRatio{{Ratio: 0.38}, {Ratio: 0.33}, {Ratio: 0.40}}
	r := bench.NewRepeated(3, rivers, ceilings)
	require.Equal(t, []float64{1.10, 0.90, 1.00}, r.Ratios)
	require.InDelta(t, 1.00, r.MedianRatio, 1e-9)
	require.InDelta(t, 0.38, r.MedianCeilingRatio, 1e-9)
	require.InDelta(t, 0.42, r.MedianRiverCeilingRatio, 1e-9)

	even := bench.NewRepeated(2, nil, ceilings[:2])
	require.InDelta(t, 0.355, even.MedianCeilingRatio, 1e-9)
	line, err := json.Marshal(even)
	require.NoError(t, err)
	require.JSONEq(t, `{"runs":2,"ceiling_ratios":[0.38,0.33],"median_ceiling_ratio":0.355}`, string(line))
}
