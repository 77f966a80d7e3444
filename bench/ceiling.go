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
	Items     int `json:"items"`
	Processed int `json:"processed"`
	// ClaimSize is how many pending items one claim takes (the biller
	// consumer's batch); ItemBatch how many items one item statement names
	// (the item consumer's batch limit); Workers how many item batches are
	// in flight at once.
	ClaimSize int     `json:"claim_size"`
	ItemBatch int     `json:"item_batch"`
	Workers   int     `json:"workers"`
	ElapsedS  float64 `json:"elapsed_s"`
	ItemsPerS float64 `json:"items_per_s"`
	// CPU is what the timed phase used (nil where it cannot be read).
	CPU *CPU `json:"cpu,omitempty"`
}

// Ceiling sizes: the pump's own batch sizes (pumpConfig, which the pump
// benchmark runs with) and enough item batches in flight to keep both
// cores busy.
const (
	ceilingClaimers = 4 // the biller consumer's concurrency
	ceilingWorkers  = 8
)

// RunCeiling issues the pump's own statements on PostgreSQL, as fast as
// they go, with no bus and no CIS: per biller, claims of pending items
// (insert Fetched) and their Fetched → Queued update, as the biller
// consumer does; then, in batches of the item consumer's size, the
// Processing claim, the enrichment read and the Processed update, as the
// item consumer's coalesced statements do. It goes through the store port,
// on opts.Shards fresh schemas with the same connection limit as the pump.
func RunCeiling(ctx context.Context, opts Options) (CeilingResult, error) {
	if err := opts.normalize(); err != nil {
		return CeilingResult{}, err
	}
	pumpCfg := pumpConfig("", opts)
	res := CeilingResult{Items: opts.Items, ClaimSize: pumpCfg.BillerConsumer.Batch, ItemBatch: pumpCfg.ItemConsumer.Batch, Workers: ceilingWorkers}
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

	// Claimed items travel to the item workers in batches of one shard.
	type batch struct {
		st    store.Store
		items []store.Claimed
	}
	queue := make(chan batch, 4*ceilingWorkers)
	var processed atomic.Int64
	bar := newBar(opts.Progress, opts.Items, "ceiling: processed")
	cpu := startCPU()
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	var claimers sync.WaitGroup
	billerCh := make(chan catalog.Biller)
	for range ceilingClaimers {
		claimers.Add(1)
		g.Go(func() error {
			defer claimers.Done()
			for b := range billerCh {
				if err := ceilingDrain(gctx, shards[b.Shard], b, res.ClaimSize, res.ItemBatch, func(items []store.Claimed) error {
					select {
					case queue <- batch{st: shards[b.Shard], items: items}:
						return nil
					case <-gctx.Done():
						return gctx.Err()
					}
				}); err != nil {
					return err
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
	for range ceilingWorkers {
		g.Go(func() error {
			for b := range queue {
				if err := ceilingProcess(gctx, b.st, b.items); err != nil {
					return err
				}
				n := processed.Add(int64(len(b.items)))
				if bar != nil {
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
	res.CPU = cpu.stop(elapsed)
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

// ceilingDrain claims a biller's pending items as the biller consumer
// does (each claim starting where the last one ended), marks them Queued,
// and hands them on in item batches.
func ceilingDrain(ctx context.Context, st store.Store, b catalog.Biller, claimSize, itemBatch int, send func([]store.Claimed) error) error {
	var from time.Time
	for {
		claimed, err := st.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: b.ID, CutoverAt: b.CutoverAt, From: from, Limit: claimSize, Owner: "bench"})
		if err != nil {
			return err
		}
		if len(claimed) == 0 {
			return nil
		}
		from = claimed[len(claimed)-1].SourceCreatedAt
		fenced := make([]store.Fenced, len(claimed))
		for i, c := range claimed {
			fenced[i] = store.Fenced{ItemKey: c.ItemKey, Version: c.Version}
		}
		if _, err := st.ControlMarkQueued(ctx, fenced); err != nil {
			return err
		}
		for len(claimed) > 0 {
			n := min(itemBatch, len(claimed))
			if err := send(claimed[:n]); err != nil {
				return err
			}
			claimed = claimed[n:]
		}
	}
}

// ceilingProcess claims, enriches and finishes one batch of items with the
// item consumer's batch statements.
func ceilingProcess(ctx context.Context, st store.Store, items []store.Claimed) error {
	ps := make([]store.ControlClaimItemParams, len(items))
	keys := make([]store.ItemKey, len(items))
	for i, c := range items {
		ps[i] = store.ControlClaimItemParams{Key: c.ItemKey, BillerID: c.BillerID, Owner: "bench", Lease: time.Minute}
		keys[i] = c.ItemKey
	}
	claims, err := st.ControlClaimBatch(ctx, ps)
	if err != nil {
		return err
	}
	finish := make([]store.ControlFinishParams, len(items))
	for i, c := range claims {
		if c.Err != nil {
			return c.Err
		}
		if c.Outcome != store.ClaimAcquired {
			return fmt.Errorf("claim %s: %s", keys[i], c.Outcome)
		}
		finish[i] = store.ControlFinishParams{Fenced: store.Fenced{ItemKey: keys[i], Version: c.Control.Version}, Status: store.StatusProcessed}
	}
	rows, err := st.ItemEnrichBatch(ctx, keys)
	if err != nil {
		return err
	}
	for i, r := range rows {
		if r.Err != nil {
			return fmt.Errorf("enrich %s: %w", keys[i], r.Err)
		}
	}
	ok, err := st.ControlFinishBatch(ctx, finish)
	if err != nil {
		return err
	}
	for i, held := range ok {
		if !held {
			return fmt.Errorf("finish %s: claim lost", keys[i])
		}
	}
	return nil
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
