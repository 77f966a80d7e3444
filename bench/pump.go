// Package bench measures the pump end to end on the embedded default or on
// PostgreSQL with an external NATS server, and sets it against two anchors
// on the same PostgreSQL: River (a general job queue) doing the same work,
// and the raw SQL ceiling of the pump's own per-item statements. It also
// times the publisher's pending scan and a biller claim as history grows.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis/mockcis"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/demo"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
)

// Backends the pump benchmark runs on.
const (
	BackendEmbedded = "embedded"
	BackendPostgres = "postgres"
)

// Defaults for the PostgreSQL backend and the anchors.
const (
	DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultNATSURL     = "nats://127.0.0.1:4222"
)

// Options size one benchmark run.
type Options struct {
	Items   int
	Billers int
	Shards  int
	// Backend is BackendEmbedded (SQLite + in-process NATS) or BackendPostgres.
	Backend string
	// PostgresDSN and NATSURL are used by BackendPostgres and the anchors.
	PostgresDSN string
	NATSURL     string
	// InsertRate, when positive, writes the pump's items at this many per
	// second while the jobs run (latency at a steady rate) instead of all
	// before they start (throughput of a backlog).
	InsertRate int
	// BigBillerItems, when positive, adds one more biller with this many
	// items, written before the others' (the fairness case).
	BigBillerItems int
	// Concurrency is the item consumers' (and the anchors' workers') concurrency.
	Concurrency int
	// CISLatency is how long the mock CIS takes to answer each request
	// (zero: at once), as a real CIS API does.
	CISLatency time.Duration
	// Interval, when positive, replaces the publisher interval of the
	// demo's configuration (500 ms).
	Interval time.Duration
	// Binary is the datapump executable RunScaling starts its item
	// consumer processes from.
	Binary string
	// Timeout bounds each measured run.
	Timeout time.Duration
	// Progress receives a progress bar (nil: none).
	Progress io.Writer
	Logger   *slog.Logger
}

// DefaultConcurrency is the item handlers per item type (and River's
// workers per item type). The handlers' statements go to the database in
// coalesced batches, so more handlers make bigger batches, not more
// connections: on the 2-core machine of bench/REPORT.md 64 ran 100,000
// items at about 2,700/s and 256 at about 3,800/s.
const DefaultConcurrency = 256

// DefaultOptions are sized for a small machine.
func DefaultOptions() Options {
	return Options{
		Items: 100000, Billers: 100, Shards: 2, Backend: BackendEmbedded,
		PostgresDSN: DefaultPostgresDSN, NATSURL: DefaultNATSURL, Concurrency: DefaultConcurrency, Timeout: 10 * time.Minute,
	}
}

func (o *Options) normalize() error {
	if o.Items <= 0 || o.Billers <= 0 || o.Shards <= 0 {
		return errors.New("items, billers and shards must be positive")
	}
	if o.Backend != BackendEmbedded && o.Backend != BackendPostgres {
		return fmt.Errorf("backend %q: want %s or %s", o.Backend, BackendEmbedded, BackendPostgres)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.PostgresDSN == "" {
		o.PostgresDSN = DefaultPostgresDSN
	}
	if o.NATSURL == "" {
		o.NATSURL = DefaultNATSURL
	}
	return nil
}

// Latency summarises a latency distribution in milliseconds.
type Latency struct {
	P50ms float64 `json:"p50_ms"`
	P95ms float64 `json:"p95_ms"`
	P99ms float64 `json:"p99_ms"`
}

// Throughput is what the mock CIS accepted in a run, and how fast.
type Throughput struct {
	// Delivered counts distinct idempotency keys, Duplicates the repeats,
	// Resends those of the repeats that were a later attempt of one CIS
	// call (its answer lost or late), not a second delivery.
	Delivered  int `json:"delivered"`
	Duplicates int `json:"duplicates"`
	Resends    int `json:"resends"`
	// DuplicateAfterMinMs and DuplicateAfterMaxMs are the shortest and
	// longest time from an item's first acceptance to a duplicate of it
	// (mockcis.Stats): resends no sooner than the CIS client's timeout
	// were answers that came too late for the attempt that sent them.
	DuplicateAfterMinMs float64 `json:"duplicate_after_min_ms,omitempty"`
	DuplicateAfterMaxMs float64 `json:"duplicate_after_max_ms,omitempty"`
	// ElapsedS is from the jobs' start to the last delivery.
	ElapsedS  float64 `json:"elapsed_s"`
	ItemsPerS float64 `json:"items_per_s"`
	// CPU is what the same span used (nil where it cannot be read).
	CPU *CPU `json:"cpu,omitempty"`
	// start is when the jobs started.
	start time.Time
}

// PumpResult is what one pump run measured.
type PumpResult struct {
	Backend string `json:"backend"`
	Items   int    `json:"items"`
	Billers int    `json:"billers"`
	Shards  int    `json:"shards"`
	Throughput
	// InsertRate is the steady insert rate, or 0 when every item was
	// written before the jobs started.
	InsertRate int `json:"insert_rate"`
	// IntervalMs is the publisher interval the run used.
	IntervalMs float64 `json:"publisher_interval_ms"`
	// CISLatencyMs is what the mock CIS added to each request.
	CISLatencyMs float64 `json:"cis_latency_ms"`
	// InsertToCIS is from the source row's created-at to the CIS accepting it.
	InsertToCIS Latency `json:"insert_to_cis"`
	// SmallBillersInsertToCIS is InsertToCIS of the items of every biller
	// but the big one (all items when there is no big biller).
	SmallBillersInsertToCIS Latency `json:"small_billers_insert_to_cis"`
	// BigBillerItems is how many items the big biller had (0: none).
	BigBillerItems int `json:"big_biller_items"`
	// CreatedToQueued is from the source row's created-at to the control
	// record's queued_at.
	CreatedToQueued Latency `json:"created_to_queued"`
	// QueuedToProcessed is from queued_at to processed_at.
	QueuedToProcessed Latency `json:"queued_to_processed"`
	// SmallBillersCreatedToQueued and SmallBillersQueuedToProcessed are
	// the two stages of the small billers' items, in a run with a big
	// biller: where the big one's backlog held them up.
	SmallBillersCreatedToQueued   *Latency `json:"small_billers_created_to_queued,omitempty"`
	SmallBillersQueuedToProcessed *Latency `json:"small_billers_queued_to_processed,omitempty"`
	// Front is how the run split between the front of the pipeline and
	// the item consumers on their own (a backlog run only).
	Front *Front `json:"front,omitempty"`
}

type seeded struct {
	shard     string
	billerID  string
	key       store.ItemKey
	createdAt time.Time
}

// RunPump loads opts.Items work items across the billers and shards, then
// runs the publisher, the biller consumer and the item consumers in this
// process against a mock CIS answering after opts.CISLatency, until every item was
// delivered. Throughput counts from the jobs' start to the last delivery.
func RunPump(ctx context.Context, opts Options) (PumpResult, error) {
	if err := opts.normalize(); err != nil {
		return PumpResult{}, err
	}
	res := PumpResult{Backend: opts.Backend, Items: opts.Items, Billers: opts.Billers, Shards: opts.Shards, InsertRate: opts.InsertRate, BigBillerItems: opts.BigBillerItems}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	r, err := openPumpRun(ctx, opts)
	if err != nil {
		return res, err
	}
	defer r.Close()
	res.IntervalMs = float64(r.cfg.Publisher.Interval.Microseconds()) / 1000
	res.CISLatencyMs = float64(opts.CISLatency.Microseconds()) / 1000
	if res.Throughput, err = r.run(ctx, app.AllJobs, "pump: delivered to CIS"); err != nil {
		return res, fmt.Errorf("pump: %w", err)
	}
	var e2e, small []time.Duration
	var queuedAt, acceptedAt []time.Time
	for _, it := range r.items {
		if at, ok := r.mock.AcceptedAt(pump.ItemMessageID(it.shard, it.key.ItemType, it.key.ItemID)); ok {
			acceptedAt = append(acceptedAt, at)
			e2e = append(e2e, at.Sub(it.createdAt))
			if it.billerID != r.bigID {
				small = append(small, at.Sub(it.createdAt))
			}
		}
	}
	res.InsertToCIS, res.SmallBillersInsertToCIS = summarize(e2e), summarize(small)
	var queued, processed, smallQueued, smallProcessed []time.Duration
	for name, st := range r.app.Shards {
		cs, err := st.ControlList(context.Background(), store.ControlListParams{Statuses: []store.Status{store.StatusProcessed}, Limit: r.total + 1})
		if err != nil {
			return res, fmt.Errorf("read control records of %s: %w", name, err)
		}
		for _, c := range cs {
			small := r.bigID != "" && c.BillerID != r.bigID
			if !c.SourceCreatedAt.IsZero() && !c.QueuedAt.IsZero() {
				queued = append(queued, c.QueuedAt.Sub(c.SourceCreatedAt))
				if small {
					smallQueued = append(smallQueued, c.QueuedAt.Sub(c.SourceCreatedAt))
				}
			}
			if !c.QueuedAt.IsZero() && !c.ProcessedAt.IsZero() {
				processed = append(processed, c.ProcessedAt.Sub(c.QueuedAt))
				if small {
					smallProcessed = append(smallProcessed, c.ProcessedAt.Sub(c.QueuedAt))
				}
			}
			if !c.QueuedAt.IsZero() {
				queuedAt = append(queuedAt, c.QueuedAt)
			}
		}
	}
	res.CreatedToQueued, res.QueuedToProcessed = summarize(queued), summarize(processed)
	if r.bigID != "" {
		q, p := summarize(smallQueued), summarize(smallProcessed)
		res.SmallBillersCreatedToQueued, res.SmallBillersQueuedToProcessed = &q, &p
	}
	if opts.InsertRate == 0 {
		res.Front = splitAtFront(res.start, res.ElapsedS, queuedAt, acceptedAt)
	}
	return res, nil
}

// Front splits a backlog run at the moment its last item was Queued.
// Until then the publisher and the biller consumer were still claiming
// and publishing, sharing the machine with the item consumers; after it
// only the item consumers had work.
type Front struct {
	// AllQueuedS is from the jobs' start to the last queued_at.
	AllQueuedS float64 `json:"all_queued_s"`
	// DeliveredBefore counts the items the CIS accepted by then.
	DeliveredBefore int `json:"delivered_before"`
	// AfterItemsPerS is the CIS's rate from then to the last delivery.
	AfterItemsPerS float64 `json:"after_items_per_s"`
}

// splitAtFront computes Front from the jobs' start, the run's elapsed
// seconds, the control records' queued_at and the CIS's acceptance times
// (all read off this machine's clock: queued_at is the database's, which
// runs here). It returns nil when no record was Queued or the last one
// was Queued after the last delivery.
func splitAtFront(start time.Time, elapsedS float64, queuedAt, acceptedAt []time.Time) *Front {
	if len(queuedAt) == 0 {
		return nil
	}
	last := slices.MaxFunc(queuedAt, time.Time.Compare)
	end := start.Add(time.Duration(elapsedS * float64(time.Second)))
	if !last.Before(end) {
		return nil
	}
	f := &Front{AllQueuedS: last.Sub(start).Seconds()}
	for _, at := range acceptedAt {
		if !at.After(last) {
			f.DeliveredBefore++
		}
	}
	f.AfterItemsPerS = float64(len(acceptedAt)-f.DeliveredBefore) / end.Sub(last).Seconds()
	return f
}

// pumpRun is one measured run's world: a mock CIS, a scratch directory,
// the configuration, the app on migrated stores with the demo source
// tables, its billers and (unless they are written at a rate) items, and
// the bus open. Close removes all of it.
type pumpRun struct {
	opts Options
	dir  string
	cfg  config.Config
	mock *mockcis.Server
	app  *app.App
	// billers are every biller but the big one (bigID, if any).
	billers []catalog.Biller
	bigID   string
	items   []seeded
	// total is how many items the CIS must accept.
	total int
	// keepDir leaves dir (its processes' logs) in place on Close.
	keepDir bool
	closers []func()
}

// openPumpRun builds the world RunPump measures in: the demo configuration
// with the item consumers' and CIS concurrency at opts.Concurrency, on
// SQLite files and the embedded NATS server, or on fresh PostgreSQL
// schemas and the external NATS server with a unique topic prefix.
func openPumpRun(ctx context.Context, opts Options) (_ *pumpRun, err error) {
	r := &pumpRun{opts: opts, total: opts.Items + max(0, opts.BigBillerItems)}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	mock, cisURL, stopCIS, err := startMockCIS(opts.Logger, opts.CISLatency)
	if err != nil {
		return nil, err
	}
	r.mock = mock
	r.closers = append(r.closers, stopCIS)
	if r.dir, err = os.MkdirTemp("", "datapump-bench-"); err != nil {
		return nil, fmt.Errorf("bench dir: %w", err)
	}
	r.closers = append(r.closers, func() {
		if !r.keepDir {
			os.RemoveAll(r.dir)
		}
	})
	r.cfg = pumpConfig(r.dir, opts)
	if opts.Backend == BackendPostgres {
		env, err := newPostgresEnv(ctx, opts.PostgresDSN, opts.NATSURL)
		if err != nil {
			return nil, err
		}
		r.closers = append(r.closers, env.Close)
		if err := env.configure(ctx, &r.cfg, opts.Shards); err != nil {
			return nil, err
		}
	}
	if err := r.cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	if r.app, err = app.Open(ctx, r.cfg, opts.Logger); err != nil {
		return nil, err
	}
	r.closers = append(r.closers, func() { r.app.Close() })
	if err := r.app.Migrate(ctx); err != nil {
		return nil, err
	}
	for name, st := range r.app.Shards {
		if err := st.(store.DemoSource).DemoSchemaCreate(ctx); err != nil {
			return nil, fmt.Errorf("demo schema on %s: %w", name, err)
		}
	}
	nBillers := opts.Billers
	if opts.BigBillerItems > 0 {
		nBillers++
	}
	if r.billers, err = seedBillers(ctx, r.app.Catalog, nBillers, r.cfg, cisURL); err != nil {
		return nil, err
	}
	if opts.BigBillerItems > 0 {
		big := r.billers[len(r.billers)-1:]
		r.bigID = big[0].ID
		if r.items, err = seedItems(ctx, r.app.Shards, big, opts.BigBillerItems, 0); err != nil {
			return nil, err
		}
		r.billers = r.billers[:len(r.billers)-1]
	}
	if opts.InsertRate <= 0 {
		items, err := seedItems(ctx, r.app.Shards, r.billers, opts.Items, 0)
		if err != nil {
			return nil, err
		}
		r.items = append(r.items, items...)
	}
	if err := r.app.OpenBus(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// run starts jobs in this process, writes the items at opts.InsertRate if
// it is set, waits until the mock CIS has accepted every item (and a
// little longer, for a late duplicate to show up) and stops the jobs.
func (r *pumpRun) run(ctx context.Context, jobs []string, desc string) (Throughput, error) {
	runner, err := r.app.NewRunner(jobs, nil)
	if err != nil {
		return Throughput{}, err
	}
	bar := newBar(r.opts.Progress, r.total, desc)
	cpu := startCPU()
	start := time.Now()
	if err := runner.Start(ctx); err != nil {
		return Throughput{}, err
	}
	defer runner.Stop()
	if r.opts.InsertRate > 0 {
		items, err := seedItems(ctx, r.app.Shards, r.billers, r.opts.Items, r.opts.InsertRate)
		if err != nil {
			return Throughput{}, err
		}
		r.items = append(r.items, items...)
	}
	if err := waitDelivered(ctx, bar, r.total, func() int { return r.mock.Stats().UniqueAccepted }); err != nil {
		return Throughput{}, fmt.Errorf("%w (%d of %d delivered)", err, r.mock.Stats().UniqueAccepted, r.total)
	}
	elapsed := time.Since(start)
	used := cpu.stop(elapsed)
	select {
	case <-ctx.Done():
	case <-time.After(2 * r.cfg.Publisher.Interval):
	}
	runner.Stop()
	stats := r.mock.Stats()
	return Throughput{
		Delivered: stats.UniqueAccepted, Duplicates: stats.Duplicates, Resends: stats.Resends,
		DuplicateAfterMinMs: stats.DuplicateAfterMinMs, DuplicateAfterMaxMs: stats.DuplicateAfterMaxMs,
		ElapsedS: elapsed.Seconds(), ItemsPerS: float64(stats.UniqueAccepted) / elapsed.Seconds(),
		CPU: used, start: start,
	}, nil
}

// Close removes what openPumpRun made, in reverse order.
func (r *pumpRun) Close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
	r.closers = nil
}

// startMockCIS serves a mock CIS with no faults, answering every request
// after latency (zero: at once).
func startMockCIS(logger *slog.Logger, latency time.Duration) (*mockcis.Server, string, func(), error) {
	mock := mockcis.New(mockcis.Options{Logger: logger, MaxRecords: 1, Faults: mockcis.Faults{Latency: latency}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, fmt.Errorf("mock cis: %w", err)
	}
	srv := &http.Server{Handler: mock, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // closed by the returned func
	return mock, "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// seedBillers writes n poll billers spread over the shards (the demo's
// billers without the off ones).
func seedBillers(ctx context.Context, cat catalog.Catalog, n int, cfg config.Config, cisURL string) ([]catalog.Biller, error) {
	out := make([]catalog.Biller, 0, n)
	for i := 1; i <= n; i++ {
		b := catalog.Biller{
			ID: fmt.Sprintf("b%04d", i), Name: fmt.Sprintf("Bench Biller %d", i),
			Shard: cfg.Shards[(i-1)%len(cfg.Shards)].Name, Mode: catalog.ModePoll,
			CutoverAt: time.Now().Add(-time.Hour).UTC(),
			CIS:       catalog.CISEndpoint{BaseURL: cisURL, Auth: catalog.AuthNone},
		}
		if err := cat.BillerUpsert(ctx, b); err != nil {
			return nil, fmt.Errorf("seed biller %s: %w", b.ID, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// seedItems writes n items round-robin over the billers, every third a
// paperless registration, in batches through the store's DemoSource: as
// fast as it can when rate is 0, else rate items per second in 20 batches
// a second (as the demo's simulated applications do).
func seedItems(ctx context.Context, shards map[string]store.Store, billers []catalog.Biller, n, rate int) ([]seeded, error) {
	const batchesPerSecond = 20
	batch := 1000
	var tick <-chan time.Time
	if rate > 0 {
		batch = max(1, rate/batchesPerSecond)
		t := time.NewTicker(time.Second / batchesPerSecond)
		defer t.Stop()
		tick = t.C
	}
	out := make([]seeded, 0, n)
	for done := 0; done < n; {
		if tick != nil && done > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-tick:
			}
		}
		m := min(batch, n-done)
		byShard := map[string][]store.DemoItem{}
		now := time.Now().UTC()
		for i := range m {
			k := done + i
			b := billers[k%len(billers)]
			byShard[b.Shard] = append(byShard[b.Shard], demoItem(b.ID, k, now))
		}
		for _, shard := range sortedKeys(byShard) {
			keys, err := shards[shard].(store.DemoSource).DemoItemsInsert(ctx, byShard[shard])
			if err != nil {
				return nil, fmt.Errorf("insert items on %s: %w", shard, err)
			}
			for i, k := range keys {
				out = append(out, seeded{shard: shard, billerID: byShard[shard][i].BillerID, key: k, createdAt: now})
			}
		}
		done += m
	}
	return out, nil
}

func demoItem(billerID string, k int, now time.Time) store.DemoItem {
	typ := items.Payment
	if k%3 == 2 {
		typ = items.Paperless
	}
	return store.DemoItem{ItemType: typ, BillerID: billerID, AmountCents: int64(100 + k%100000), Email: fmt.Sprintf("customer%d@example.com", k), CreatedAt: now}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func newBar(w io.Writer, n int, desc string) *progressbar.ProgressBar {
	if w == nil {
		return nil
	}
	return progressbar.NewOptions(n,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("items"),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

// waitDelivered polls done() until it reaches n, updating the bar; it
// returns ctx's cause if ctx ends first.
func waitDelivered(ctx context.Context, bar *progressbar.ProgressBar, n int, done func() int) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		d := done()
		if bar != nil {
			bar.Set(d) //nolint:errcheck // display only
		}
		if d >= n {
			if bar != nil {
				bar.Finish() //nolint:errcheck // display only
			}
			return nil
		}
		select {
		case <-ctx.Done():
			// The cause says why (a deadline, or an item consumer process
			// that exited).
			return context.Cause(ctx)
		case <-tick.C:
		}
	}
}

func summarize(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p float64) float64 {
		return float64(s[int(p*float64(len(s)-1)+0.5)].Microseconds()) / 1000
	}
	return Latency{P50ms: at(0.50), P95ms: at(0.95), P99ms: at(0.99)}
}

// FairnessRatio compares the small billers' p99 insert→CIS latency with and
// without a big biller.
type FairnessRatio struct {
	SmallP99Alone   float64 `json:"small_p99_ms_alone"`
	SmallP99WithBig float64 `json:"small_p99_ms_with_big"`
	Ratio           float64 `json:"fairness_ratio"`
	Duplicates      int     `json:"duplicates"`
}

// pumpConfig is the configuration the benchmark runs the pump with: the
// demo's (half-second rounds), a 2 s watermark lag, opts.Concurrency item
// handlers per item type, and the production rescue deadline: a 100,000-item backlog keeps
// items Queued longer than the demo's 15 s with no message lost, and
// republishing them would only add duplicate messages to the backlog.
func pumpConfig(dir string, opts Options) config.Config {
	cfg := demo.Config(dir, opts.Shards)
	cfg.Owner = "bench"
	cfg.Publisher.StuckAfter = config.Default().Publisher.StuckAfter
	// A benchmark runs alone on a quiet machine, where its writer's batches
	// commit within milliseconds of their created-at: a 2 s lag covers that
	// and keeps each round's rescan to two seconds of rows. Should a batch
	// ever wait longer, its rows are found by the next full sweep, a minute
	// on (the first one runs at the start, before any rows are late).
	cfg.Publisher.WatermarkLag = 2 * time.Second
	cfg.Publisher.FullSweepEvery = time.Minute
	cfg.ItemConsumer.Concurrency = opts.Concurrency
	cfg.CIS.MaxConcurrent = opts.Concurrency
	if opts.Interval > 0 {
		cfg.Publisher.Interval = opts.Interval
		cfg.Publisher.LeaseTTL = max(cfg.Publisher.LeaseTTL, 4*opts.Interval)
		cfg.Publisher.FullSweepEvery = max(cfg.Publisher.FullSweepEvery, opts.Interval)
	}
	return cfg
}
