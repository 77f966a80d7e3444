package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/datapump/datapump/internal/store"
)

// PollingPoint is the cost of the publisher's pending scan and of one
// biller claim with History processed control records already in the shard.
type PollingPoint struct {
	History int `json:"history"`
	// PendingCountMs is the median time of one PendingCount over every biller.
	PendingCountMs float64 `json:"pending_count_ms"`
	// ClaimMs is the median time of one ControlClaimPending of a biller.
	ClaimMs float64 `json:"claim_ms"`
	// FullSweepMs is the time of one PendingCount from the cut-overs (the
	// periodic full sweep), which does read the history.
	FullSweepMs float64 `json:"full_sweep_ms"`
	// SeedS is how long seeding the history took (not part of the cost).
	SeedS float64 `json:"seed_s"`
}

// PollingResult compares the largest history with the smallest.
type PollingResult struct {
	Points            []PollingPoint `json:"points"`
	PendingCountRatio float64        `json:"pending_count_ratio"`
	ClaimRatio        float64        `json:"claim_ratio"`
}

// pollingRuns is how many times each statement is timed (the median counts).
const pollingRuns = 9

// PollingPendingPerBiller is how many items each biller has pending.
const PollingPendingPerBiller = 20

// RunPolling times PendingCount and ControlClaimPending on PostgreSQL with
// each history size of already-processed control records (and their source
// rows, created after the cut-over, as after months of running), and
// opts.Billers billers with a few pending items each. The history is seeded
// with INSERT … SELECT generate_series; it is test data.
func RunPolling(ctx context.Context, opts Options, histories []int) (PollingResult, error) {
	var res PollingResult
	if err := opts.normalize(); err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	for _, h := range histories {
		p, err := pollingPoint(ctx, opts, h)
		if err != nil {
			return res, err
		}
		res.Points = append(res.Points, p)
	}
	if n := len(res.Points); n >= 2 && res.Points[0].PendingCountMs > 0 && res.Points[0].ClaimMs > 0 {
		res.PendingCountRatio = res.Points[n-1].PendingCountMs / res.Points[0].PendingCountMs
		res.ClaimRatio = res.Points[n-1].ClaimMs / res.Points[0].ClaimMs
	}
	return res, nil
}

func pollingPoint(ctx context.Context, opts Options, history int) (PollingPoint, error) {
	p := PollingPoint{History: history}
	env, err := newPostgresEnv(ctx, opts.PostgresDSN, "")
	if err != nil {
		return p, err
	}
	defer env.Close()
	st, err := openPostgresShard(ctx, env, "poll", opts)
	if err != nil {
		return p, err
	}
	defer st.Close()
	schema := pgx.Identifier{env.schemas[len(env.schemas)-1]}.Sanitize()

	seedStart := time.Now()
	// Processed history: source rows half an hour old (after the cut-over)
	// with their Processed control records, spread over the billers.
	for _, q := range []string{
		fmt.Sprintf(`INSERT INTO %s.payments (biller_id, account_id, amount_cents, created_at)
			SELECT 'b' || lpad(((g %% %d) + 1)::text, 4, '0'), 0, 100, now() - interval '30 minutes'
			FROM generate_series(1, %d) g`, schema, opts.Billers, history),
		fmt.Sprintf(`INSERT INTO %s.datapump_control (item_type, item_id, biller_id, status, version, owner, origin,
				source_created_at, created_at, updated_at, fetched_at, queued_at, processing_at, processed_at)
			SELECT 'payment', id, biller_id, 'Processed', 4, 'bench', 'poll',
				created_at, created_at, created_at, created_at, created_at, created_at, created_at
			FROM %s.payments`, schema, schema),
		fmt.Sprintf(`ANALYZE %s.payments`, schema),
		fmt.Sprintf(`ANALYZE %s.datapump_control`, schema),
	} {
		if _, err := env.pool.Exec(ctx, q); err != nil {
			return p, fmt.Errorf("seed history: %w", err)
		}
	}
	p.SeedS = time.Since(seedStart).Seconds()

	cutover := time.Now().Add(-time.Hour).UTC()
	var cutovers []store.BillerCutover
	var pending []store.DemoItem
	now := time.Now().UTC()
	for i := 1; i <= opts.Billers; i++ {
		id := fmt.Sprintf("b%04d", i)
		cutovers = append(cutovers, store.BillerCutover{BillerID: id, CutoverAt: cutover})
		for j := range PollingPendingPerBiller {
			pending = append(pending, demoItem(id, i*PollingPendingPerBiller+j, now))
		}
	}
	if _, err := st.DemoItemsInsert(ctx, pending); err != nil {
		return p, fmt.Errorf("seed pending: %w", err)
	}

	// The publisher's rounds: the first after a start is a full sweep,
	// which brings the watermarks up to the pending items; every later
	// round counts from there, with the lag of the configuration the pump
	// benchmark runs.
	lag := pumpConfig("", opts).Publisher.WatermarkLag
	t0 := time.Now()
	if _, err := st.PendingCount(ctx, store.PendingCountParams{Billers: cutovers, Full: true, WatermarkLag: lag}); err != nil {
		return p, err
	}
	p.FullSweepMs = float64(time.Since(t0).Microseconds()) / 1000
	var scans []time.Duration
	oldest := map[string]time.Time{}
	for range pollingRuns {
		t0 := time.Now()
		counts, err := st.PendingCount(ctx, store.PendingCountParams{Billers: cutovers, WatermarkLag: lag})
		if err != nil {
			return p, err
		}
		scans = append(scans, time.Since(t0))
		for _, c := range counts {
			oldest[c.BillerID] = c.OldestCreatedAt
		}
	}
	// One claim per biller, each from the oldest pending item its
	// announcement names and taking that biller's pending items (the
	// default batch of 200 is larger than what is pending).
	var claims []time.Duration
	for _, b := range cutovers[:min(pollingRuns, len(cutovers))] {
		t0 := time.Now()
		got, err := st.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: b.BillerID, CutoverAt: b.CutoverAt, From: oldest[b.BillerID], Limit: 200, Owner: "bench"})
		if err != nil {
			return p, err
		}
		claims = append(claims, time.Since(t0))
		if len(got) != PollingPendingPerBiller {
			return p, fmt.Errorf("claim %s: got %d items, want %d", b.BillerID, len(got), PollingPendingPerBiller)
		}
	}
	p.PendingCountMs, p.ClaimMs = medianMS(scans), medianMS(claims)
	return p, nil
}

func medianMS(ds []time.Duration) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[len(s)/2].Microseconds()) / 1000
}
