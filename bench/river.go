package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/postgres"
)

// riverShard names River's database in idempotency keys.
const riverShard = "river"

// RiverTuning is how the River anchor's client is configured. River
// requires a worker count; its fetch cadence has defaults.
type RiverTuning struct {
	// Name says which preset this is ("defaults" or "tuned").
	Name string `json:"name"`
	// Workers is the queue's MaxWorkers.
	Workers int `json:"workers"`
	// FetchCooldown and FetchPollInterval are River's client settings;
	// zero keeps River's defaults (100 ms and 1 s).
	FetchCooldown     time.Duration `json:"fetch_cooldown"`
	FetchPollInterval time.Duration `json:"fetch_poll_interval"`
}

// RiverDefaults is River as it ships, with as many workers as the pump
// has item handlers in all (opts.Concurrency per item type): a client
// fetches at most one batch of jobs per 100 ms cooldown.
func RiverDefaults(opts Options) RiverTuning {
	return RiverTuning{Name: "defaults", Workers: opts.Concurrency * len(items.Builtin())}
}

// RiverTuned is River configured for throughput the way its
// documentation allows: the same workers, fetching every 5 ms and polling
// every 50 ms (its insert notifications wake it sooner).
func RiverTuned(opts Options) RiverTuning {
	t := RiverDefaults(opts)
	t.Name, t.FetchCooldown, t.FetchPollInterval = "tuned", 5*time.Millisecond, 50*time.Millisecond
	return t
}

// RiverResult is what the River anchor measured.
type RiverResult struct {
	Tuning     RiverTuning `json:"tuning"`
	Jobs       int         `json:"jobs"`
	Delivered  int         `json:"delivered"`
	Duplicates int         `json:"duplicates"`
	Workers    int         `json:"workers"`
	ElapsedS   float64     `json:"elapsed_s"`
	JobsPerS   float64     `json:"jobs_per_s"`
	// CPU is what the timed phase used (nil where it cannot be read).
	CPU *CPU `json:"cpu,omitempty"`
	// InsertToCIS is from the job's insert to the CIS accepting it.
	InsertToCIS Latency `json:"insert_to_cis"`
}

// itemArgs is one River job: deliver one work item.
type itemArgs struct {
	ItemType string `json:"item_type"`
	ItemID   int64  `json:"item_id"`
	BillerID string `json:"biller_id"`
}

// Kind names the job kind.
func (itemArgs) Kind() string { return "datapump_bench_item" }

// itemWorker does what the pump's item consumer does for one item: the
// type's enrichment query, the mapping, and the CIS POST with the same
// Idempotency-Key scheme, through the pump's own CIS client.
type itemWorker struct {
	river.WorkerDefaults[itemArgs]
	pool     *pgxpool.Pool
	types    map[string]items.Type
	enrich   map[string]string
	cis      *cis.Client
	endpoint catalog.CISEndpoint
}

func (w *itemWorker) Work(ctx context.Context, job *river.Job[itemArgs]) error {
	t, ok := w.types[job.Args.ItemType]
	if !ok {
		return fmt.Errorf("unknown item type %q", job.Args.ItemType)
	}
	rows, err := w.pool.Query(ctx, w.enrich[t.Name], job.Args.ItemID)
	if err != nil {
		return fmt.Errorf("enrich: %w", err)
	}
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToMap)
	if err != nil {
		return fmt.Errorf("enrich: %w", err)
	}
	payload, err := t.Map(row)
	if err != nil {
		return fmt.Errorf("map: %w", err)
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	_, err = w.cis.Send(ctx, cis.Request{
		BillerID: job.Args.BillerID, Endpoint: w.endpoint, Path: t.CISPath,
		IdempotencyKey: pump.ItemMessageID(riverShard, t.Name, job.Args.ItemID), Body: body,
	})
	return err
}

// RunRiver processes opts.Items jobs with River on opts.PostgresDSN (its own
// schema, migrated with rivermigrate): each job runs the same enrichment
// query over the same demo source tables and makes the same CIS call as the
// pump's item consumer, with River configured as tuning says.
func RunRiver(ctx context.Context, opts Options, tuning RiverTuning) (RiverResult, error) {
	if err := opts.normalize(); err != nil {
		return RiverResult{}, err
	}
	res := RiverResult{Tuning: tuning, Jobs: opts.Items, Workers: tuning.Workers}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	mock, cisURL, stopCIS, err := startMockCIS(opts.Logger, opts.CISLatency)
	if err != nil {
		return res, err
	}
	defer stopCIS()
	env, err := newPostgresEnv(ctx, opts.PostgresDSN, "")
	if err != nil {
		return res, err
	}
	defer env.Close()
	schema, err := env.schema(ctx, "river")
	if err != nil {
		return res, err
	}

	types := items.Builtin()
	sources := make([]store.Source, len(types))
	byName := map[string]items.Type{}
	enrich := map[string]string{}
	for i, t := range types {
		sources[i] = t.Source
		byName[t.Name] = t
		enrich[t.Name] = store.BindEnrichQuery(t.Source.EnrichQuery, "$1")
	}
	src, err := postgres.Open(ctx, postgres.Config{DSN: opts.PostgresDSN, Schema: schema, MaxConns: 4, Sources: sources, Logger: opts.Logger})
	if err != nil {
		return res, err
	}
	defer src.Close()
	if err := src.DemoSchemaCreate(ctx); err != nil {
		return res, err
	}
	billers := make([]catalog.Biller, opts.Billers)
	for i := range billers {
		billers[i] = catalog.Biller{ID: fmt.Sprintf("b%04d", i+1)}
	}

	poolCfg, err := pgxpool.ParseConfig(env.dsnWith(schema))
	if err != nil {
		return res, fmt.Errorf("river pool: %w", err)
	}
	// The pump gets 16 connections per shard; River the same in total.
	poolCfg.MaxConns = int32(16 * opts.Shards)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return res, fmt.Errorf("river pool: %w", err)
	}
	defer pool.Close()
	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: schema, Logger: opts.Logger})
	if err != nil {
		return res, fmt.Errorf("river migrate: %w", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return res, fmt.Errorf("river migrate: %w", err)
	}

	cfg := demoCISConfig(opts)
	client, err := cis.New(cis.Config{
		DefaultTimeout: cfg.Timeout, Retries: cfg.Retries, BackoffInitial: cfg.BackoffInitial, BackoffMax: cfg.BackoffMax,
		DefaultRatePerSecond: cfg.RatePerSecond, DefaultMaxConcurrent: cfg.MaxConcurrent,
		BreakerFailures: cfg.BreakerFailures, BreakerOpenFor: cfg.BreakerOpenFor, Logger: opts.Logger,
		MaxIdleConnsPerHost: tuning.Workers,
	})
	if err != nil {
		return res, fmt.Errorf("cis client: %w", err)
	}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &itemWorker{
		pool: pool, types: byName, enrich: enrich, cis: client,
		endpoint: catalog.CISEndpoint{BaseURL: cisURL, Auth: catalog.AuthNone},
	}); err != nil {
		return res, fmt.Errorf("river worker: %w", err)
	}
	rc, err := river.NewClient(driver, &river.Config{
		Schema:            schema,
		FetchCooldown:     tuning.FetchCooldown,
		FetchPollInterval: tuning.FetchPollInterval,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: tuning.Workers}},
		Workers:           workers,
		Logger:            opts.Logger,
	})
	if err != nil {
		return res, fmt.Errorf("river client: %w", err)
	}

	// Load the source rows and one job per row, as the pump's run loads
	// its source rows before the jobs start.
	type job struct {
		key       store.ItemKey
		createdAt time.Time
	}
	var jobs []job
	const batch = 1000
	for done := 0; done < opts.Items; {
		m := min(batch, opts.Items-done)
		now := time.Now().UTC()
		its := make([]store.DemoItem, m)
		for i := range its {
			its[i] = demoItem(billers[(done+i)%len(billers)].ID, done+i, now)
		}
		keys, err := src.DemoItemsInsert(ctx, its)
		if err != nil {
			return res, fmt.Errorf("insert items: %w", err)
		}
		params := make([]river.InsertManyParams, len(keys))
		for i, k := range keys {
			params[i] = river.InsertManyParams{Args: itemArgs{ItemType: k.ItemType, ItemID: k.ItemID, BillerID: its[i].BillerID}}
			jobs = append(jobs, job{key: k, createdAt: now})
		}
		if _, err := rc.InsertManyFast(ctx, params); err != nil {
			return res, fmt.Errorf("insert river jobs: %w", err)
		}
		done += m
	}

	bar := newBar(opts.Progress, opts.Items, "river: delivered to CIS")
	cpu := startCPU()
	start := time.Now()
	if err := rc.Start(ctx); err != nil {
		return res, fmt.Errorf("river start: %w", err)
	}
	waitErr := waitDelivered(ctx, bar, opts.Items, func() int { return mock.Stats().UniqueAccepted })
	elapsed := time.Since(start)
	res.CPU = cpu.stop(elapsed)
	stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer stopCancel()
	if err := rc.Stop(stopCtx); err != nil {
		return res, fmt.Errorf("river stop: %w", err)
	}
	if waitErr != nil {
		return res, fmt.Errorf("river: %w (%d of %d delivered)", waitErr, mock.Stats().UniqueAccepted, opts.Items)
	}
	stats := mock.Stats()
	res.Delivered, res.Duplicates = stats.UniqueAccepted, stats.Duplicates
	res.ElapsedS = elapsed.Seconds()
	res.JobsPerS = float64(res.Delivered) / elapsed.Seconds()
	var e2e []time.Duration
	for _, j := range jobs {
		if at, ok := mock.AcceptedAt(pump.ItemMessageID(riverShard, j.key.ItemType, j.key.ItemID)); ok {
			e2e = append(e2e, at.Sub(j.createdAt))
		}
	}
	res.InsertToCIS = summarize(e2e)
	return res, nil
}

// demoCISConfig is the CIS client configuration the pump runs with in the
// benchmark (the demo's, with the benchmark's concurrency).
func demoCISConfig(opts Options) config.CISConfig {
	c := config.Default().CIS
	c.Timeout = 2 * time.Second
	c.MaxConcurrent = opts.Concurrency
	return c
}

// RiverRatio is the last line of `datapump bench --quick`: the pump
// against River tuned for throughput (the target's anchor), and against
// River's defaults.
type RiverRatio struct {
	PumpItemsPerS        float64 `json:"pump_items_per_s"`
	RiverJobsPerS        float64 `json:"river_jobs_per_s"`
	Ratio                float64 `json:"ratio"`
	RiverDefaultJobsPerS float64 `json:"river_default_jobs_per_s"`
	RatioVsRiverDefaults float64 `json:"ratio_vs_river_defaults"`
	// CeilingItemsPerS and RiverCeilingRatio are there when the same run
	// measured the raw SQL ceiling too (--river --ceiling): River tuned's
	// share of the ceiling the pump's share is held to.
	CeilingItemsPerS  float64 `json:"sql_ceiling_items_per_s,omitempty"`
	RiverCeilingRatio float64 `json:"river_ceiling_ratio,omitempty"`
}

// NewRiverRatio compares the pump's rate with River's two runs and, when
// ceiling is positive, River tuned's with the ceiling.
func NewRiverRatio(pumpItemsPerS float64, defaults, tuned RiverResult, ceiling float64) RiverRatio {
	r := RiverRatio{
		PumpItemsPerS: pumpItemsPerS, RiverJobsPerS: tuned.JobsPerS, Ratio: Ratio(pumpItemsPerS, tuned.JobsPerS),
		RiverDefaultJobsPerS: defaults.JobsPerS, RatioVsRiverDefaults: Ratio(pumpItemsPerS, defaults.JobsPerS),
	}
	if ceiling > 0 {
		r.CeilingItemsPerS, r.RiverCeilingRatio = ceiling, Ratio(tuned.JobsPerS, ceiling)
	}
	return r
}

// Ratio is a over b, or 0 when b is 0 (a run that measured nothing).
func Ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
