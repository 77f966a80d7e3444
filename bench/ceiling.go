package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/postgres"
)

// CeilingResult is what the raw SQL ceiling measured.
type CeilingResult struct {
	Items     int     `json:"items"`
	Processed int     `json:"processed"`
	ClaimSize int     `json:"claim_size"`
	Workers   int     `json:"workers"`
	ElapsedS  float64 `json:"elapsed_s"`
	ItemsPerS float64 `json:"items_per_s"`
}

// ceilingClaim is how many items one pending claim takes.
const ceilingClaim = 1000

// RunCeiling issues the pump's own per-item statements on PostgreSQL, as
// fast as they go, with no bus and no CIS: per biller, claims of up to
// ceilingClaim pending items (insert Fetched) and their Fetched → Queued
// update; per item, with opts.Concurrency workers, the Processing claim, the
// enrichment read and the Processed update. It goes through the store port,
// on opts.Shards fresh schemas with the same connection limit as the pump.
func RunCeiling(ctx context.Context, opts Options) (CeilingResult, error) {
	if err := opts.normalize(); err != nil {
		return CeilingResult{}, err
	}
	res := CeilingResult{Items: opts.Items, ClaimSize: ceilingClaim, Workers: opts.Concurrency}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	env, err := newPostgresEnv(ctx, opts.PostgresDSN, "")
	if err != nil {
		return res, err
	}
	defer env.Close()
	shards := map[string]store.Store{}
	names := make([]string, opts.Shards)
	for i := range names {
		names[i] = fmt.Sprintf("shard%d", i+1)
		st, err := openPostgresShard(ctx, env, fmt.Sprintf("c%d", i+1), opts)
		if err != nil {
			return res, err
		}
		defer st.Close()
		shards[names[i]] = st
	}
	billers := make([]catalog.Biller, opts.Billers)
	cutover := time.Now().Add(-time.Hour).UTC()
	for i := range billers {
		billers[i] = catalog.Biller{ID: fmt.Sprintf("b%04d", i+1), Shard: names[i%len(names)], Mode: catalog.ModePoll, CutoverAt: cutover}
	}
	if _, err := seedItems(ctx, shards, billers, opts.Items, 0); err != nil {
		return res, err
	}

	type work struct {
		st store.Store
		c  store.Claimed
	}
	queue := make(chan work, 4*ceilingClaim)
	var processed atomic.Int64
	bar := newBar(opts.Progress, opts.Items, "ceiling: processed")
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	var claimers sync.WaitGroup
	billerCh := make(chan catalog.Biller)
	// As many claimers as the pump's biller consumer runs by default.
	for range 4 {
		claimers.Add(1)
		g.Go(func() error {
			defer claimers.Done()
			for b := range billerCh {
				st := shards[b.Shard]
				for {
					claimed, err := st.ControlClaimPending(gctx, store.ControlClaimPendingParams{BillerID: b.ID, CutoverAt: b.CutoverAt, Limit: ceilingClaim, Owner: "bench"})
					if err != nil {
						return err
					}
					if len(claimed) == 0 {
						break
					}
					fenced := make([]store.Fenced, len(claimed))
					for i, c := range claimed {
						fenced[i] = store.Fenced{ItemKey: c.ItemKey, Version: c.Version}
					}
					if _, err := st.ControlMarkQueued(gctx, fenced); err != nil {
						return err
					}
					for _, c := range claimed {
						select {
						case queue <- work{st: st, c: c}:
						case <-gctx.Done():
							return gctx.Err()
						}
					}
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(billerCh)
		for _, b := range billers {
			select {
			case billerCh <- b:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	go func() { claimers.Wait(); close(queue) }()
	for range opts.Concurrency {
		g.Go(func() error {
			for w := range queue {
				ic, err := w.st.ControlClaimItem(gctx, store.ControlClaimItemParams{Key: w.c.ItemKey, BillerID: w.c.BillerID, Owner: "bench", Lease: time.Minute})
				if err != nil {
					return err
				}
				if ic.Outcome != store.ClaimAcquired {
					return fmt.Errorf("claim %s: %s", w.c.ItemKey, ic.Outcome)
				}
				if _, err := w.st.ItemEnrich(gctx, w.c.ItemKey); err != nil {
					return err
				}
				ok, err := w.st.ControlFinish(gctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: w.c.ItemKey, Version: ic.Control.Version}, Status: store.StatusProcessed})
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("finish %s: claim lost", w.c.ItemKey)
				}
				n := processed.Add(1)
				if bar != nil && n%500 == 0 {
					bar.Set(int(n)) //nolint:errcheck // display only
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, fmt.Errorf("ceiling: %w", err)
	}
	elapsed := time.Since(start)
	if bar != nil {
		bar.Finish() //nolint:errcheck // display only
	}
	res.Processed = int(processed.Load())
	if res.Processed != opts.Items {
		return res, errors.New("ceiling: not every item was processed")
	}
	res.ElapsedS = elapsed.Seconds()
	res.ItemsPerS = float64(res.Processed) / elapsed.Seconds()
	return res, nil
}

// openPostgresShard opens a migrated shard store with the demo source
// tables in a fresh schema of env, with the pump's connection limit.
func openPostgresShard(ctx context.Context, env *postgresEnv, suffix string, opts Options) (*postgres.Store, error) {
	schema, err := env.schema(ctx, suffix)
	if err != nil {
		return nil, err
	}
	types := items.Builtin()
	sources := make([]store.Source, len(types))
	for i, t := range types {
		sources[i] = t.Source
	}
	st, err := postgres.Open(ctx, postgres.Config{DSN: opts.PostgresDSN, Schema: schema, MaxConns: 16, Sources: sources, Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	if err := st.Migrate(ctx); err != nil {
		st.Close()
		return nil, err
	}
	if err := st.DemoSchemaCreate(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// CeilingRatio sets the pump against the raw SQL ceiling.
type CeilingRatio struct {
	PumpItemsPerS    float64 `json:"pump_items_per_s"`
	CeilingItemsPerS float64 `json:"sql_ceiling_items_per_s"`
	Ratio            float64 `json:"ceiling_ratio"`
}
