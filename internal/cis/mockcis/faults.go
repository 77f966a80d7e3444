package mockcis

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"
)

// DefaultTimeoutDelay is how long a "timeout" fault hangs when
// Faults.TimeoutDelay is zero.
const DefaultTimeoutDelay = 30 * time.Second

// Faults says what the mock does wrong. Random faults are drawn from one
// uniform number per request against consecutive bands (5xx, 429, timeout,
// reject, bad payload), so their rates add up and should total at most 1.
// Targeted rules are checked first, in this order: missing Idempotency-Key
// (400), RequireAPIKey and RequireBearer (401), RejectBillers (422),
// FailFirst (503).
//
// In JSON (PUT /_mock/faults) durations are strings such as "250ms" (a
// number is read as nanoseconds) and unknown fields are refused.
type Faults struct {
	// Latency is added to every delivery.
	Latency time.Duration
	// LatencyJitter adds a random extra latency in [0, LatencyJitter).
	LatencyJitter time.Duration
	// Rate5xx is the probability of a 503.
	Rate5xx float64
	// Rate429 is the probability of a 429 with Retry-After: 1.
	Rate429 float64
	// RateTimeout is the probability of hanging for TimeoutDelay before
	// answering 200. The request IS accepted: a client that gave up will
	// retry, which is how duplicates happen.
	RateTimeout float64
	// TimeoutDelay is the hang of a timeout fault (DefaultTimeoutDelay if 0).
	TimeoutDelay time.Duration
	// RateReject is the probability of a 422 (permanent).
	RateReject float64
	// RateBadPayload is the probability of a 200 with a non-JSON body (the
	// item is accepted; only the answer is malformed).
	RateBadPayload float64
	// FailFirst answers 503 to the first N requests with a given
	// idempotency key (key → N).
	FailFirst map[string]int
	// RejectBillers always get 422. A request's biller comes from header
	// X-Biller-Id, else from the JSON body's billerId.
	RejectBillers []string
	// RequireAPIKey, when set, makes deliveries without header
	// X-Api-Key equal to it get 401.
	RequireAPIKey string
	// RequireBearer makes deliveries without a bearer token issued by this
	// server's /oauth/token get 401.
	RequireBearer bool
	// Seed makes the random faults deterministic for a given arrival order.
	Seed int64
}

// Validate checks rates and durations and names the bad field.
func (f Faults) Validate() error {
	rates := []struct {
		name string
		v    float64
	}{
		{"rate5xx", f.Rate5xx}, {"rate429", f.Rate429}, {"rateTimeout", f.RateTimeout},
		{"rateReject", f.RateReject}, {"rateBadPayload", f.RateBadPayload},
	}
	total := 0.0
	for _, r := range rates {
		if r.v < 0 || r.v > 1 {
			return fmt.Errorf("%s: %g is not a probability in [0, 1]", r.name, r.v)
		}
		total += r.v
	}
	if total > 1+1e-9 {
		return fmt.Errorf("rates: they add up to %g, above 1", total)
	}
	for name, d := range map[string]time.Duration{"latency": f.Latency, "latencyJitter": f.LatencyJitter, "timeoutDelay": f.TimeoutDelay} {
		if d < 0 {
			return fmt.Errorf("%s: %s must not be negative", name, d)
		}
	}
	for key, n := range f.FailFirst {
		if n < 0 {
			return fmt.Errorf("failFirst: %q: %d must not be negative", key, n)
		}
	}
	return nil
}

func (f Faults) clone() Faults {
	f.FailFirst = maps.Clone(f.FailFirst)
	f.RejectBillers = slices.Clone(f.RejectBillers)
	return f
}

// jsonDuration reads "250ms" or a number of nanoseconds and writes "250ms".
type jsonDuration time.Duration

// MarshalJSON writes the duration as a string.
func (d jsonDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string or a number of nanoseconds.
func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = jsonDuration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration: want a string such as \"250ms\" or nanoseconds, got %s", b)
	}
	*d = jsonDuration(n)
	return nil
}

type faultsJSON struct {
	Latency        jsonDuration   `json:"latency"`
	LatencyJitter  jsonDuration   `json:"latencyJitter"`
	Rate5xx        float64        `json:"rate5xx"`
	Rate429        float64        `json:"rate429"`
	RateTimeout    float64        `json:"rateTimeout"`
	TimeoutDelay   jsonDuration   `json:"timeoutDelay"`
	RateReject     float64        `json:"rateReject"`
	RateBadPayload float64        `json:"rateBadPayload"`
	FailFirst      map[string]int `json:"failFirst,omitempty"`
	RejectBillers  []string       `json:"rejectBillers,omitempty"`
	RequireAPIKey  string         `json:"requireApiKey,omitempty"`
	RequireBearer  bool           `json:"requireBearer"`
	Seed           int64          `json:"seed"`
}

// MarshalJSON writes the faults with camelCase keys and string durations.
func (f Faults) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultsJSON{
		Latency: jsonDuration(f.Latency), LatencyJitter: jsonDuration(f.LatencyJitter),
		Rate5xx: f.Rate5xx, Rate429: f.Rate429, RateTimeout: f.RateTimeout,
		TimeoutDelay: jsonDuration(f.TimeoutDelay), RateReject: f.RateReject, RateBadPayload: f.RateBadPayload,
		FailFirst: f.FailFirst, RejectBillers: f.RejectBillers, RequireAPIKey: f.RequireAPIKey,
		RequireBearer: f.RequireBearer, Seed: f.Seed,
	})
}

// UnmarshalJSON reads what MarshalJSON writes and refuses unknown keys.
func (f *Faults) UnmarshalJSON(b []byte) error {
	var j faultsJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return err
	}
	*f = Faults{
		Latency: time.Duration(j.Latency), LatencyJitter: time.Duration(j.LatencyJitter),
		Rate5xx: j.Rate5xx, Rate429: j.Rate429, RateTimeout: j.RateTimeout,
		TimeoutDelay: time.Duration(j.TimeoutDelay), RateReject: j.RateReject, RateBadPayload: j.RateBadPayload,
		FailFirst: j.FailFirst, RejectBillers: j.RejectBillers, RequireAPIKey: j.RequireAPIKey,
		RequireBearer: j.RequireBearer, Seed: j.Seed,
	}
	return nil
}
