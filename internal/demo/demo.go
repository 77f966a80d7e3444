// Package demo runs the whole pump on the embedded default — SQLite shard
// databases, an in-process NATS JetStream server and the mock CIS — with
// seeded billers and work items, and reports what reached the CIS.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis/mockcis"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
)

// Options size the demo.
type Options struct {
	Billers int
	Items   int
	Shards  int
	// OffEvery: every OffEvery-th biller is off (owned by the old pump).
	OffEvery int
	// InsertRate is how many items per second the simulated applications write.
	InsertRate int
	// Dir holds the databases; empty uses a temporary folder removed afterwards.
	Dir string
	// Timeout bounds the whole run.
	Timeout time.Duration
	// Progress receives the live progress bar (nil: none).
	Progress io.Writer
	// ProgressLines receives a plain progress line every few seconds
	// instead, when the output is not a terminal (nil: none).
	ProgressLines io.Writer
	Logger        *slog.Logger
	// HTTPAddr, when set, serves the admin endpoints and status page there.
	HTTPAddr string
	// Configure, when set, may adjust the generated configuration.
	Configure func(*config.Config)
}

// DefaultOptions are the sizes `datapump demo` uses.
func DefaultOptions() Options {
	return Options{Billers: 20, Items: 10000, Shards: 2, OffEvery: 5, InsertRate: 2500, Timeout: 5 * time.Minute}
}

// Summary is what the demo reports.
type Summary struct {
	Billers      int     `json:"billers"`
	PollBillers  int     `json:"poll_billers"`
	OffBillers   int     `json:"off_billers"`
	Shards       int     `json:"shards"`
	Items        int     `json:"items"`
	PollItems    int     `json:"poll_items"`
	OffItems     int     `json:"off_items"`
	Delivered    int     `json:"delivered"`
	Duplicates   int     `json:"duplicates"`
	Lost         int     `json:"lost"`
	Failed       int     `json:"failed"`
	UntouchedOff int     `json:"untouched_off"`
	CISRequests  int     `json:"cis_requests"`
	P50ms        float64 `json:"p50_ms"`
	P99ms        float64 `json:"p99_ms"`
	ElapsedS     float64 `json:"elapsed_s"`
	ItemsPerS    float64 `json:"items_per_s"`
}

type seededItem struct {
	shard     string
	billerID  string
	key       store.ItemKey
	createdAt time.Time
	poll      bool
}

// Run runs the demo and returns its summary.
func Run(ctx context.Context, opts Options) (Summary, error) {
	if opts.Billers <= 0 || opts.Items <= 0 || opts.Shards <= 0 {
		return Summary{}, errors.New("demo: billers, items and shards must be positive")
	}
	if opts.OffEvery <= 0 {
		opts.OffEvery = 5
	}
	if opts.InsertRate <= 0 {
		opts.InsertRate = 2500
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "datapump-demo-")
		if err != nil {
			return Summary{}, fmt.Errorf("demo dir: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	}

	mock := mockcis.New(mockcis.Options{Logger: opts.Logger})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Summary{}, fmt.Errorf("mock cis: %w", err)
	}
	srv := &http.Server{Handler: mock, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // closed below
	defer srv.Close()
	cisURL := "http://" + ln.Addr().String()

	cfg := Config(dir, opts.Shards)
	cfg.HTTP.Addr = opts.HTTPAddr
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		return Summary{}, err
	}
	a, err := app.Open(ctx, cfg, opts.Logger)
	if err != nil {
		return Summary{}, err
	}
	defer a.Close()
	if err := a.Migrate(ctx); err != nil {
		return Summary{}, err
	}
	for name, st := range a.Shards {
		if err := st.(store.DemoSource).DemoSchemaCreate(ctx); err != nil {
			return Summary{}, fmt.Errorf("demo schema on %s: %w", name, err)
		}
	}
	billers, err := seedBillers(ctx, a.Catalog, opts, cfg, cisURL)
	if err != nil {
		return Summary{}, err
	}
	if err := a.OpenBus(ctx); err != nil {
		return Summary{}, err
	}
	runner, err := a.NewRunner(app.AllJobs, nil)
	if err != nil {
		return Summary{}, err
	}
	start := time.Now()
	if err := runner.Start(ctx); err != nil {
		return Summary{}, err
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			runner.Stop()
		}
	}
	defer stop()

	var bar *progressbar.ProgressBar
	if opts.Progress != nil {
		bar = progressbar.NewOptions(opts.Items,
			progressbar.OptionSetWriter(opts.Progress),
			progressbar.OptionSetDescription("delivered to CIS"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("items"),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	lines := &progressLines{w: opts.ProgressLines, every: 2 * time.Second, last: time.Now()}
	seeded, err := insertItems(ctx, a, billers, opts, func() { updateBar(bar, mock) })
	if err != nil {
		// Interrupted while writing: report what was written and delivered so far.
		stop()
		return summarize(context.Background(), a, mock, seeded, billers, opts, time.Since(start)), err
	}
	pollItems := 0
	for _, it := range seeded {
		if it.poll {
			pollItems++
		}
	}
	if bar != nil {
		bar.ChangeMax(pollItems)
	}
	// Wait until every poll item reached the CIS, then a little longer to
	// catch any late duplicate.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for mock.Stats().UniqueAccepted < pollItems {
		updateBar(bar, mock)
		lines.update(mock.Stats().UniqueAccepted, pollItems)
		select {
		case <-ctx.Done():
			stop()
			return summarize(context.Background(), a, mock, seeded, billers, opts, time.Since(start)), fmt.Errorf("demo: timed out with %d of %d items delivered", mock.Stats().UniqueAccepted, pollItems)
		case <-tick.C:
		}
	}
	elapsed := time.Since(start)
	updateBar(bar, mock)
	if bar != nil {
		bar.Finish()
	}
	select {
	case <-ctx.Done():
	case <-time.After(2 * cfg.Publisher.Interval):
	}
	stop()
	return summarize(context.Background(), a, mock, seeded, billers, opts, elapsed), nil
}

func updateBar(bar *progressbar.ProgressBar, mock *mockcis.Server) {
	if bar != nil {
		bar.Set(mock.Stats().UniqueAccepted) //nolint:errcheck // display only
	}
}

// progressLines prints a plain progress line every few seconds, for
// output that is not a terminal (CI logs, files).
type progressLines struct {
	w     io.Writer
	every time.Duration
	last  time.Time
}

func (p *progressLines) update(delivered, total int) {
	if p == nil || p.w == nil || time.Since(p.last) < p.every {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "progress: %d of %d items delivered to the CIS\n", delivered, total)
}

// Config is the demo's configuration: SQLite catalog and shards in dir, the
// embedded NATS server, and short intervals so the demo finishes quickly.
func Config(dir string, shards int) config.Config {
	cfg := config.Default()
	cfg.Owner = "demo"
	cfg.Catalog = config.CatalogConfig{Driver: config.DriverSQLite, DSN: filepath.Join(dir, "catalog.db")}
	for i := 1; i <= shards; i++ {
		name := fmt.Sprintf("shard%d", i)
		cfg.Shards = append(cfg.Shards, config.ShardConfig{Name: name, Driver: config.DriverSQLite, DSN: filepath.Join(dir, name+".db")})
	}
	cfg.Bus.NATS.Embedded.StoreDir = filepath.Join(dir, "nats")
	cfg.Publisher.Interval = 500 * time.Millisecond
	cfg.Publisher.LeaseTTL = 5 * time.Second
	cfg.Publisher.StuckAfter = 15 * time.Second
	// The demo's writer stamps created-at before it waits for SQLite's
	// single writer, which on a loaded machine (the test suite under the
	// race detector) can take seconds: the lag must cover that wait.
	cfg.Publisher.WatermarkLag = 30 * time.Second
	cfg.BillerConsumer.Concurrency = 16
	cfg.BillerConsumer.Batch = 500
	cfg.BillerConsumer.MaxItemsPerMessage = 500
	cfg.ItemConsumer.Concurrency = 64
	cfg.ItemConsumer.Lease = 30 * time.Second
	cfg.ItemConsumer.RetryInitial = 200 * time.Millisecond
	cfg.ItemConsumer.RetryMax = 2 * time.Second
	cfg.CIS.Timeout = 2 * time.Second
	cfg.CIS.MaxConcurrent = 64
	return cfg
}

func seedBillers(ctx context.Context, cat catalog.Catalog, opts Options, cfg config.Config, cisURL string) ([]catalog.Biller, error) {
	var out []catalog.Biller
	for i := 1; i <= opts.Billers; i++ {
		b := catalog.Biller{
			ID:        fmt.Sprintf("b%03d", i),
			Name:      fmt.Sprintf("Demo Biller %d", i),
			Shard:     cfg.Shards[(i-1)%len(cfg.Shards)].Name,
			Mode:      catalog.ModePoll,
			CutoverAt: time.Now().Add(-time.Hour).UTC(),
			CIS:       catalog.CISEndpoint{BaseURL: cisURL, Auth: catalog.AuthNone},
		}
		if i%opts.OffEvery == 0 {
			b.Mode = catalog.ModeOff
			b.CutoverAt = time.Time{}
		}
		if err := cat.BillerUpsert(ctx, b); err != nil {
			return nil, fmt.Errorf("seed biller %s: %w", b.ID, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// insertItems plays the source applications: it writes the items in small
// batches at opts.InsertRate, each with its related account row.
func insertItems(ctx context.Context, a *app.App, billers []catalog.Biller, opts Options, onBatch func()) ([]seededItem, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	const batchesPerSecond = 20
	batch := max(1, opts.InsertRate/batchesPerSecond)
	tick := time.NewTicker(time.Second / batchesPerSecond)
	defer tick.Stop()
	seeded := make([]seededItem, 0, opts.Items)
	for done := 0; done < opts.Items; {
		n := min(batch, opts.Items-done)
		byShard := map[string][]store.DemoItem{}
		byShardBiller := map[string][]catalog.Biller{}
		now := time.Now().UTC()
		for range n {
			b := billers[rng.IntN(len(billers))]
			typ := items.Payment
			if rng.IntN(3) == 0 {
				typ = items.Paperless
			}
			byShard[b.Shard] = append(byShard[b.Shard], store.DemoItem{
				ItemType: typ, BillerID: b.ID, AmountCents: 100 + rng.Int64N(100000),
				Email: fmt.Sprintf("customer%d@example.com", rng.IntN(1000000)), CreatedAt: now,
			})
			byShardBiller[b.Shard] = append(byShardBiller[b.Shard], b)
		}
		for shard, its := range byShard {
			keys, err := a.Shards[shard].(store.DemoSource).DemoItemsInsert(ctx, its)
			if err != nil {
				return seeded, fmt.Errorf("insert demo items on %s: %w", shard, err)
			}
			for i, k := range keys {
				b := byShardBiller[shard][i]
				seeded = append(seeded, seededItem{shard: shard, billerID: b.ID, key: k, createdAt: now, poll: b.Mode == catalog.ModePoll})
			}
		}
		done += n
		onBatch()
		select {
		case <-ctx.Done():
			return seeded, ctx.Err()
		case <-tick.C:
		}
	}
	return seeded, nil
}

func summarize(ctx context.Context, a *app.App, mock *mockcis.Server, seeded []seededItem, billers []catalog.Biller, opts Options, elapsed time.Duration) Summary {
	s := Summary{Billers: len(billers), Shards: opts.Shards, Items: len(seeded), ElapsedS: elapsed.Seconds()}
	for _, b := range billers {
		if b.Mode == catalog.ModeOff {
			s.OffBillers++
		} else {
			s.PollBillers++
		}
	}
	stats := mock.Stats()
	s.Duplicates = stats.Duplicates
	s.CISRequests = stats.Requests
	var latencies []time.Duration
	for _, it := range seeded {
		id := pump.ItemMessageID(it.shard, it.key.ItemType, it.key.ItemID)
		at, accepted := mock.AcceptedAt(id)
		if !it.poll {
			s.OffItems++
			_, err := a.Shards[it.shard].ControlGet(ctx, it.key)
			if !accepted && errors.Is(err, store.ErrNotFound) {
				s.UntouchedOff++
			}
			continue
		}
		s.PollItems++
		if accepted {
			s.Delivered++
			latencies = append(latencies, at.Sub(it.createdAt))
			continue
		}
		if c, err := a.Shards[it.shard].ControlGet(ctx, it.key); err == nil && c.Status == store.StatusFailed {
			s.Failed++
			continue
		}
		s.Lost++
	}
	if elapsed > 0 {
		s.ItemsPerS = float64(s.Delivered) / elapsed.Seconds()
	}
	s.P50ms, s.P99ms = percentileMS(latencies, 0.50), percentileMS(latencies, 0.99)
	return s
}

func percentileMS(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	sorted := slices.Clone(ds)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	idx := int(p*float64(len(sorted)-1) + 0.5)
	return float64(sorted[idx].Microseconds()) / 1000
}
