package bench

import "slices"

// Repeated is the last line of a run repeated with --repeat: each
// repetition's ratios, in order, and their medians. On a shared machine
// whose speed drifts by a fifth within minutes, the median of pump and
// anchor runs taken in turns says more than any one of them.
type Repeated struct {
	Runs int `json:"runs"`
	// Ratios is pump over River tuned, one per repetition (with --river).
	Ratios      []float64 `json:"ratios,omitempty"`
	MedianRatio float64   `json:"median_ratio,omitempty"`
	// CeilingRatios is pump over the raw SQL ceiling (with --ceiling).
	CeilingRatios      []float64 `json:"ceiling_ratios,omitempty"`
	MedianCeilingRatio float64   `json:"median_ceiling_ratio,omitempty"`
	// RiverCeilingRatios is River tuned over the same ceiling (with both).
	RiverCeilingRatios      []float64 `json:"river_ceiling_ratios,omitempty"`
	MedianRiverCeilingRatio float64   `json:"median_river_ceiling_ratio,omitempty"`
}

// NewRepeated gathers the repetitions' ratios: rivers and ceilings hold
// one entry per repetition that ran that anchor (either may be empty).
func NewRepeated(runs int, rivers []RiverRatio, ceilings []CeilingRatio) Repeated {
	r := Repeated{Runs: runs}
	for _, rr := range rivers {
		r.Ratios = append(r.Ratios, rr.Ratio)
		if rr.CeilingItemsPerS > 0 {
			r.RiverCeilingRatios = append(r.RiverCeilingRatios, rr.RiverCeilingRatio)
		}
	}
	for _, c := range ceilings {
		r.CeilingRatios = append(r.CeilingRatios, c.Ratio)
	}
	r.MedianRatio = median(r.Ratios)
	r.MedianCeilingRatio = median(r.CeilingRatios)
	r.MedianRiverCeilingRatio = median(r.RiverCeilingRatios)
	return r
}

// median is the middle value of xs (the mean of the two middle ones for
// an even count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}
