package app_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis/mockcis"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
)

// backend is one combination of shard database and broker the pipeline
// tests run on.
type backend struct {
	name string
	// configure fills in catalog, shards and bus for one isolated test.
	configure func(t *testing.T, cfg *config.Config)
}

func backends(t *testing.T) []backend {
	out := []backend{{name: "sqlite+embedded-nats", configure: configureSQLite}}
	pg, natsURL := os.Getenv("DATAPUMP_TEST_POSTGRES_DSN"), os.Getenv("DATAPUMP_TEST_NATS_URL")
	if pg != "" && natsURL != "" {
		out = append(out, backend{name: "postgres+external-nats", configure: func(t *testing.T, cfg *config.Config) { configurePostgres(t, cfg, pg, natsURL) }})
	} else {
		t.Log("postgres+external-nats pipeline skipped: set DATAPUMP_TEST_POSTGRES_DSN and DATAPUMP_TEST_NATS_URL to run it")
	}
	return out
}

// eachBackend runs fn as a parallel subtest per backend.
func eachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Parallel()
	bs := backends(t)
	if len(bs) < 2 {
		t.Run("postgres+external-nats", func(t *testing.T) {
			t.Skip("set DATAPUMP_TEST_POSTGRES_DSN and DATAPUMP_TEST_NATS_URL to run")
		})
	}
	for _, b := range bs {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}

func configureSQLite(t *testing.T, cfg *config.Config) {
	dir := t.TempDir()
	cfg.Catalog = config.CatalogConfig{Driver: config.DriverSQLite, DSN: filepath.Join(dir, "catalog.db")}
	for _, name := range []string{"shard1", "shard2"} {
		cfg.Shards = append(cfg.Shards, config.ShardConfig{Name: name, Driver: config.DriverSQLite, DSN: filepath.Join(dir, name+".db")})
	}
	cfg.Bus.NATS.Embedded.StoreDir = filepath.Join(dir, "nats")
}

func configurePostgres(t *testing.T, cfg *config.Config, dsn, natsURL string) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	id := fmt.Sprintf("p%d", rand.Uint32())
	withPath := func(schema string) string {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "search_path=" + schema
	}
	for _, suffix := range []string{"cat", "s1", "s2"} {
		schema := id + "_" + suffix
		_, err := conn.Exec(ctx, "CREATE SCHEMA "+schema)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") }) //nolint:errcheck
	}
	cfg.Catalog = config.CatalogConfig{Driver: config.DriverPostgres, DSN: withPath(id + "_cat")}
	cfg.Shards = []config.ShardConfig{
		{Name: "shard1", Driver: config.DriverPostgres, DSN: withPath(id + "_s1"), MaxConns: 8},
		{Name: "shard2", Driver: config.DriverPostgres, DSN: withPath(id + "_s2"), MaxConns: 8},
	}
	cfg.Bus.NATS.URL = natsURL
	cfg.Bus.TopicPrefix = id + "-"
	t.Cleanup(func() { deleteStreams(t, natsURL, id) })
}

// deleteStreams removes the streams a test made on the shared external server.
func deleteStreams(t *testing.T, url, prefix string) {
	nc, err := nats.Connect(url)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	names := js.StreamNames(ctx)
	for n := range names.Name() {
		if strings.Contains(strings.ToLower(n), strings.ToLower(prefix)) {
			_ = js.DeleteStream(ctx, n)
		}
	}
}

// harness is one running pump with its mock CIS.
type harness struct {
	t       *testing.T
	cfg     config.Config
	app     *app.App
	mock    *mockcis.Server
	cisURL  string
	runners []*app.Runner
}

func newHarness(t *testing.T, b backend, tune func(*config.Config)) *harness {
	t.Helper()
	cfg := config.Default()
	cfg.Owner = "test"
	b.configure(t, &cfg)
	cfg.Publisher.Interval = 200 * time.Millisecond
	cfg.Publisher.LeaseTTL = 3 * time.Second
	cfg.Publisher.StuckAfter = 10 * time.Second
	cfg.BillerConsumer.Batch = 100
	cfg.BillerConsumer.MaxItemsPerMessage = 500
	cfg.Bus.LockDuration = 5 * time.Second
	cfg.ItemConsumer.Concurrency = 16
	// Generous: under -race on a loaded two-core machine a slow database
	// write must not hand an item to a second worker.
	cfg.ItemConsumer.Lease = 30 * time.Second
	cfg.ItemConsumer.RetryInitial = 100 * time.Millisecond
	cfg.ItemConsumer.RetryMax = 400 * time.Millisecond
	cfg.ItemConsumer.MaxAttempts = 5
	// Long enough that a loaded machine does not time out a request the
	// mock CIS has accepted (a resend would count as a duplicate).
	cfg.CIS.Timeout = 5 * time.Second
	cfg.CIS.Retries = 1
	cfg.CIS.BackoffInitial = 20 * time.Millisecond
	cfg.CIS.BackoffMax = 50 * time.Millisecond
	cfg.CIS.BreakerFailures = 1000
	if tune != nil {
		tune(&cfg)
	}
	require.NoError(t, cfg.Validate())

	mock := mockcis.New(mockcis.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: mock, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { srv.Close() })

	ctx := context.Background()
	a, err := app.Open(ctx, cfg, testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })
	require.NoError(t, a.Migrate(ctx))
	for _, st := range a.Shards {
		require.NoError(t, st.(store.DemoSource).DemoSchemaCreate(ctx))
	}
	require.NoError(t, a.OpenBus(ctx))
	return &harness{t: t, cfg: cfg, app: a, mock: mock, cisURL: "http://" + ln.Addr().String()}
}

func (h *harness) biller(id, shard string, mode catalog.Mode) catalog.Biller {
	h.t.Helper()
	b := catalog.Biller{ID: id, Name: id, Shard: shard, Mode: mode, CIS: catalog.CISEndpoint{BaseURL: h.cisURL, Auth: catalog.AuthNone}}
	if mode != catalog.ModeOff {
		b.CutoverAt = time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	}
	require.NoError(h.t, h.app.Catalog.BillerUpsert(context.Background(), b))
	return b
}

// start runs the given jobs (all when none) in a new runner.
func (h *harness) start(jobs ...string) *app.Runner {
	h.t.Helper()
	if len(jobs) == 0 {
		jobs = app.AllJobs
	}
	r, err := h.app.NewRunner(jobs, nil)
	require.NoError(h.t, err)
	require.NoError(h.t, r.Start(context.Background()))
	h.runners = append(h.runners, r)
	h.t.Cleanup(func() { r.Stop() })
	return r
}

type written struct {
	shard  string
	biller string
	key    store.ItemKey
}

func (w written) messageID() string { return pump.ItemMessageID(w.shard, w.key.ItemType, w.key.ItemID) }

// insert writes n items for a biller, as the source applications would.
func (h *harness) insert(b catalog.Biller, n int, mutate func(i int, it *store.DemoItem)) []written {
	h.t.Helper()
	its := make([]store.DemoItem, n)
	for i := range its {
		typ := items.Payment
		if i%3 == 2 {
			typ = items.Paperless
		}
		its[i] = store.DemoItem{ItemType: typ, BillerID: b.ID, AmountCents: int64(100 + i), Email: fmt.Sprintf("c%d@example.com", i)}
		if mutate != nil {
			mutate(i, &its[i])
		}
	}
	keys, err := h.app.Shards[b.Shard].(store.DemoSource).DemoItemsInsert(context.Background(), its)
	require.NoError(h.t, err)
	out := make([]written, len(keys))
	for i, k := range keys {
		out[i] = written{shard: b.Shard, biller: b.ID, key: k}
	}
	return out
}

// waitStatus waits until every item's control record has the status.
func (h *harness) waitStatus(ws []written, want store.Status, within time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		missing := 0
		var example string
		for _, w := range ws {
			c, err := h.app.Shards[w.shard].ControlGet(context.Background(), w.key)
			if err != nil || c.Status != want {
				missing++
				if example == "" {
					example = fmt.Sprintf("%s: status %q err %v", w.key, c.Status, err)
				}
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d of %d items not %s after %s (e.g. %s)", missing, len(ws), want, within, example)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// requireExactlyOnce checks every item was accepted by the CIS exactly once.
func (h *harness) requireExactlyOnce(ws []written) {
	h.t.Helper()
	accepted := map[string]int{}
	for _, r := range h.mock.Requests() {
		if r.Status >= 200 && r.Status < 300 {
			accepted[r.IdempotencyKey]++
		}
	}
	for _, w := range ws {
		require.Equal(h.t, 1, accepted[w.messageID()], "item %s accepted %d times", w.messageID(), accepted[w.messageID()])
	}
	require.Zero(h.t, h.mock.Stats().Duplicates)
}

func TestPipelineDeliversEveryItemExactlyOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		// Thousands of items on PostgreSQL; fewer on SQLite, whose pure-Go
		// driver is slow under the race detector.
		perBiller := 250
		if b.name == "sqlite+embedded-nats" {
			perBiller = 120
		}
		var all, offItems []written
		for i := range 12 {
			shard := []string{"shard1", "shard2"}[i%2]
			mode := catalog.ModePoll
			if i%4 == 3 {
				mode = catalog.ModeOff
			}
			bl := h.biller(fmt.Sprintf("b%02d", i), shard, mode)
			ws := h.insert(bl, perBiller, nil)
			if mode == catalog.ModeOff {
				offItems = append(offItems, ws...)
			} else {
				all = append(all, ws...)
			}
		}
		h.start()
		h.waitStatus(all, store.StatusProcessed, 5*time.Minute)
		h.requireExactlyOnce(all)
		for _, w := range offItems {
			_, err := h.app.Shards[w.shard].ControlGet(context.Background(), w.key)
			require.ErrorIs(t, err, store.ErrNotFound, "off biller's item %s touched", w.key)
		}
		for _, r := range h.mock.Requests() {
			require.NotContains(t, []string{"b03", "b07", "b11"}, r.BillerID, "off biller reached the CIS")
		}
	})
}

func TestPipelineLateAndDuplicateMessagesChangeNothing(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ws := h.insert(bl, 50, nil)
		h.start()
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)
		before := h.mock.Stats().Requests
		ctx := context.Background()
		// Replay every item message under fresh MessageIDs (the broker's
		// duplicate detection would drop the same ID) and a late biller message.
		byTopic := map[string][]bus.Message{}
		for _, w := range ws {
			typ, err := h.app.Items.Get(w.key.ItemType)
			require.NoError(t, err)
			m, err := pump.EncodeItemMessage(pump.ItemMessage{Shard: w.shard, ItemType: w.key.ItemType, ItemID: w.key.ItemID, BillerID: w.biller, Origin: pump.OriginPoll}, w.messageID()+":replay")
			require.NoError(t, err)
			byTopic[typ.Topic] = append(byTopic[typ.Topic], m)
		}
		for topic, msgs := range byTopic {
			_, err := h.app.Bus.Publish(ctx, topic, msgs...)
			require.NoError(t, err)
		}
		bm, err := pump.EncodeBillerMessage(pump.BillerMessage{BillerID: bl.ID, Shard: bl.Shard, Pending: 50}, time.Unix(1, 0))
		require.NoError(t, err)
		_, err = h.app.Bus.Publish(ctx, items.BillerTopic, bm)
		require.NoError(t, err)
		// A marker item published after the replays: once it is processed,
		// the consumers have gone past the replayed messages.
		marker := h.insert(bl, 1, nil)
		h.waitStatus(marker, store.StatusProcessed, 3*time.Minute)
		time.Sleep(3 * h.cfg.Publisher.Interval)
		require.Equal(t, before+1, h.mock.Stats().Requests, "replayed messages reached the CIS")
		h.requireExactlyOnce(append(ws, marker...))
		for _, w := range ws {
			c, err := h.app.Shards[w.shard].ControlGet(ctx, w.key)
			require.NoError(t, err)
			require.Equal(t, store.StatusProcessed, c.Status)
		}
	})
}

func TestPipelineRestartMidBatchDeliversEverything(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, func(cfg *config.Config) {
			cfg.ItemConsumer.Concurrency = 4
		})
		h.mock.SetFaults(mockcis.Faults{Latency: 5 * time.Millisecond})
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ws := h.insert(bl, 400, nil)
		first := h.start()
		// Stop the first pump while items are in flight.
		deadline := time.Now().Add(time.Minute)
		for h.mock.Stats().UniqueAccepted < 40 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		require.NoError(t, first.Stop())
		require.Less(t, h.mock.Stats().UniqueAccepted, len(ws), "the first pump finished before it was stopped")
		h.start()
		h.waitStatus(ws, store.StatusProcessed, 2*time.Minute)
		// A crash between the CIS call and the Processed update may resend an
		// item, always with the same Idempotency-Key; a graceful stop must not.
		h.requireExactlyOnce(ws)
	})
}

func TestPipelineRetriesTransientCISFailures(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ws := h.insert(bl, 20, nil)
		failFirst := map[string]int{}
		for _, w := range ws[:10] {
			failFirst[w.messageID()] = 3 // more than the in-call retries: forces a redelivery
		}
		h.mock.SetFaults(mockcis.Faults{FailFirst: failFirst})
		h.start()
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)
		h.requireExactlyOnce(ws)
		for _, w := range ws[:10] {
			c, err := h.app.Shards[w.shard].ControlGet(context.Background(), w.key)
			require.NoError(t, err)
			require.GreaterOrEqual(t, c.Attempts, 1, "item %s should have been retried", w.key)
		}
	})
}

func TestPipelineFailsRejectedAndBrokenItemsAlone(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		good := h.biller("good", "shard1", catalog.ModePoll)
		rejected := h.biller("rejected", "shard2", catalog.ModePoll)
		h.mock.SetFaults(mockcis.Faults{RejectBillers: []string{"rejected"}})
		okItems := h.insert(good, 20, nil)
		broken := h.insert(good, 2, func(_ int, it *store.DemoItem) { it.SkipAccount = true })
		rej := h.insert(rejected, 5, nil)
		h.start()
		h.waitStatus(okItems, store.StatusProcessed, 3*time.Minute)
		h.waitStatus(append(broken, rej...), store.StatusFailed, 3*time.Minute)
		ctx := context.Background()
		for _, w := range broken {
			c, err := h.app.Shards[w.shard].ControlGet(ctx, w.key)
			require.NoError(t, err)
			require.Contains(t, c.LastError, "related rows missing")
		}
		for _, w := range rej {
			c, err := h.app.Shards[w.shard].ControlGet(ctx, w.key)
			require.NoError(t, err)
			require.Contains(t, c.LastError, "422")
		}
		h.requireExactlyOnce(okItems)
		dls := waitDeadLetters(t, h, items.PaymentTopic, pump.ItemSubscription, 1)
		require.Equal(t, pump.ReasonItemFailed, dls[0].Reason)
	})
}

func TestPipelineDeadLettersBadMessagesAndGoesOn(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		h.start()
		ctx := context.Background()
		_, err := h.app.Bus.Publish(ctx, items.PaymentTopic,
			bus.Message{ID: "garbage-1", Body: []byte("not json")},
			bus.Message{ID: "wrong-type-1", Body: []byte(`{"schemaVersion":1,"shard":"shard1","itemType":"refund","itemId":1,"billerId":"b1","origin":"direct"}`)},
		)
		require.NoError(t, err)
		_, err = h.app.Bus.Publish(ctx, items.BillerTopic, bus.Message{ID: "garbage-2", Body: []byte("{")})
		require.NoError(t, err)
		ws := h.insert(bl, 10, nil)
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)
		dls := waitDeadLetters(t, h, items.PaymentTopic, pump.ItemSubscription, 2)
		reasons := map[string]string{}
		for _, d := range dls {
			reasons[d.ID] = d.Reason + ": " + d.Description
		}
		require.Contains(t, reasons["garbage-1"], pump.ReasonInvalidMessage)
		require.Contains(t, reasons["wrong-type-1"], pump.ReasonUnknownItemType)
		require.Contains(t, reasons["wrong-type-1"], `itemType: unknown item type: "refund"`)
		bdl := waitDeadLetters(t, h, items.BillerTopic, pump.BillerSubscription, 1)
		require.Equal(t, pump.ReasonInvalidMessage, bdl[0].Reason)
	})
}

func waitDeadLetters(t *testing.T, h *harness, topic, sub string, n int) []bus.DeadLetter {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		dls, err := h.app.Bus.DeadLetters(context.Background(), topic, sub, 100)
		require.NoError(t, err)
		if len(dls) >= n {
			return dls
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d dead letters on %s/%s, want %d", len(dls), topic, sub, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var _ = errors.Is
