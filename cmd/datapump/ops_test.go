package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis/mockcis"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
)

// opsEnv is one isolated catalog, two shards (shard1, shard2) and a bus,
// described by a config file, for running the operator commands; app is
// the test's own handle on the same databases (no bus).
type opsEnv struct {
	t       *testing.T
	cfgPath string
	// secret is the database password the config names as ${VAR}; no
	// command may print it. Empty when the databases have none.
	secret string
	mock   *mockcis.Server
	cisURL string
	app    *app.App
}

// eachOpsBackend runs fn against SQLite files and, when
// DATAPUMP_TEST_POSTGRES_DSN is set, against fresh PostgreSQL schemas. The
// bus is the NATS server of DATAPUMP_TEST_NATS_URL when set, else an
// embedded one keeping its state in the test's folder.
func eachOpsBackend(t *testing.T, fn func(t *testing.T, e *opsEnv)) {
	t.Parallel()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		fn(t, newOpsEnv(t, sqliteDatabases))
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		dsn := os.Getenv("DATAPUMP_TEST_POSTGRES_DSN")
		if dsn == "" {
			t.Skip("set DATAPUMP_TEST_POSTGRES_DSN to run")
		}
		fn(t, newOpsEnv(t, func(t *testing.T, _ string) (string, string) { return postgresDatabases(t, dsn) }))
	})
}

// sqliteDatabases is the config of a SQLite catalog and shards in dir.
func sqliteDatabases(_ *testing.T, dir string) (string, string) {
	return strings.ReplaceAll(`catalog: {driver: sqlite, dsn: DIR/catalog.db}
shards:
  - {name: shard1, driver: sqlite, dsn: DIR/shard1.db}
  - {name: shard2, driver: sqlite, dsn: DIR/shard2.db}
`, "DIR", dir), ""
}

// postgresDatabases creates three fresh schemas and returns the config of
// a catalog and shards in them, with a password given as ${VAR} in every
// DSN (the test server trusts local connections, so any password works).
func postgresDatabases(t *testing.T, dsn string) (string, string) {
	ctx := context.Background()
	u, err := url.Parse(dsn)
	require.NoError(t, err, "DATAPUMP_TEST_POSTGRES_DSN must be a postgres:// URL")
	require.Contains(t, []string{"postgres", "postgresql"}, u.Scheme, "DATAPUMP_TEST_POSTGRES_DSN must be a postgres:// URL")
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	id := fmt.Sprintf("ops%d", rand.Uint32())
	for _, suffix := range []string{"cat", "s1", "s2"} {
		schema := id + "_" + suffix
		_, err := conn.Exec(ctx, "CREATE SCHEMA "+schema)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") }) //nolint:errcheck // best effort
	}
	secret := fmt.Sprintf("Pw%016x", rand.Uint64())
	envVar := fmt.Sprintf("OPSTEST_PGPASS_%d", rand.Uint32())
	// Not t.Setenv: the test is parallel. The name is unique to this test.
	require.NoError(t, os.Setenv(envVar, secret))
	t.Cleanup(func() { os.Unsetenv(envVar) })
	user := "postgres"
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
	}
	withSchema := func(schema string) string {
		q := u.Query()
		q.Set("search_path", schema)
		return fmt.Sprintf("%q", fmt.Sprintf("%s://%s:${%s}@%s%s?%s", u.Scheme, user, envVar, u.Host, u.Path, q.Encode()))
	}
	return fmt.Sprintf(`catalog: {driver: postgres, dsn: %s}
shards:
  - {name: shard1, driver: postgres, dsn: %s}
  - {name: shard2, driver: postgres, dsn: %s}
`, withSchema(id+"_cat"), withSchema(id+"_s1"), withSchema(id+"_s2")), secret
}

func newOpsEnv(t *testing.T, databases func(t *testing.T, dir string) (string, string)) *opsEnv {
	t.Helper()
	dir := t.TempDir()
	dbs, secret := databases(t, dir)
	busYAML := fmt.Sprintf("bus: {nats: {embedded: {store_dir: %q}}}\n", filepath.Join(dir, "nats"))
	if natsURL := os.Getenv("DATAPUMP_TEST_NATS_URL"); natsURL != "" {
		prefix := fmt.Sprintf("ops%d-", rand.Uint32())
		busYAML = fmt.Sprintf("bus: {nats: {url: %q}, topic_prefix: %s}\n", natsURL, prefix)
		t.Cleanup(func() { deleteStreams(t, natsURL, prefix) })
	}
	cfgPath := filepath.Join(dir, "datapump.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(`owner: ops
`+dbs+busYAML+`publisher: {interval: 200ms, lease_ttl: 2s, stuck_after: 1h}
item_consumer: {retry_initial: 100ms, retry_max: 400ms}
log: {level: debug}
`), 0o600))

	mock := mockcis.New(mockcis.Options{})
	srv := httptest.NewServer(mock)
	t.Cleanup(srv.Close)
	e := &opsEnv{t: t, cfgPath: cfgPath, secret: secret, mock: mock, cisURL: srv.URL}

	code, out, errOut := e.cli("migrate")
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "migrated 2 shard")

	ctx := context.Background()
	cfg, err := config.Load(cfgPath, nil)
	require.NoError(t, err)
	a, err := app.Open(ctx, cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })
	for _, st := range a.Shards {
		require.NoError(t, st.(store.DemoSource).DemoSchemaCreate(ctx))
	}
	e.app = a
	return e
}

// cli runs one command against the env's config and checks that its
// output never holds the database password.
func (e *opsEnv) cli(args ...string) (int, string, string) {
	e.t.Helper()
	code, out, errOut := runCLI(e.t, append(args, "--config", e.cfgPath)...)
	e.requireNoSecret(out + errOut)
	return code, out, errOut
}

func (e *opsEnv) requireNoSecret(s string) {
	e.t.Helper()
	if e.secret != "" {
		require.NotContains(e.t, s, e.secret, "a command printed the database password")
	}
}

func (e *opsEnv) biller(id, shard string, mode catalog.Mode) catalog.Biller {
	e.t.Helper()
	b := catalog.Biller{ID: id, Name: "Biller " + id, Shard: shard, Mode: mode, CIS: catalog.CISEndpoint{BaseURL: e.cisURL, Auth: catalog.AuthNone}}
	if mode != catalog.ModeOff {
		b.CutoverAt = time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	}
	require.NoError(e.t, e.app.Catalog.BillerUpsert(context.Background(), b))
	return b
}

// insert writes n items of one type for a biller, as the applications would.
func (e *opsEnv) insert(b catalog.Biller, typ string, n int) []store.ItemKey {
	e.t.Helper()
	its := make([]store.DemoItem, n)
	for i := range its {
		its[i] = store.DemoItem{ItemType: typ, BillerID: b.ID, AmountCents: int64(1000 + i), Email: fmt.Sprintf("c%d@example.com", i)}
	}
	keys, err := e.app.Shards[b.Shard].(store.DemoSource).DemoItemsInsert(context.Background(), its)
	require.NoError(e.t, err)
	return keys
}

// fail makes an item Failed the way the item consumer would: claimed, then
// finished with an error.
func (e *opsEnv) fail(shard, billerID string, key store.ItemKey, msg string) {
	e.t.Helper()
	ctx := context.Background()
	st := e.app.Shards[shard]
	cl, err := st.ControlClaimItem(ctx, store.ControlClaimItemParams{Key: key, BillerID: billerID, Owner: "seed", Lease: time.Minute, InsertIfAbsent: true, Origin: pump.OriginDirect})
	require.NoError(e.t, err)
	require.Equal(e.t, store.ClaimAcquired, cl.Outcome)
	ok, err := st.ControlFinish(ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: key, Version: cl.Control.Version}, Status: store.StatusFailed, Error: msg})
	require.NoError(e.t, err)
	require.True(e.t, ok)
}

func (e *opsEnv) control(shard string, key store.ItemKey) store.Control {
	e.t.Helper()
	c, err := e.app.Shards[shard].ControlGet(context.Background(), key)
	require.NoError(e.t, err)
	return c
}

func decodeJSON[T any](t *testing.T, out string) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal([]byte(out), &v), out)
	return v
}

func msgID(shard string, k store.ItemKey) string {
	return pump.ItemMessageID(shard, k.ItemType, k.ItemID)
}

// billers, status, inspect and retry on one set of databases: JSON and
// text output, a dry run that changes nothing, a retry whose messages a
// running item consumer delivers, and bad input refused with exit code 2.
func TestOperatorCommands(t *testing.T) {
	eachOpsBackend(t, func(t *testing.T, e *opsEnv) {
		ctx := context.Background()
		b1 := e.biller("b1", "shard1", catalog.ModePoll)
		b2 := e.biller("b2", "shard2", catalog.ModePoll)
		b3 := e.biller("b3", "shard1", catalog.ModeOff)
		pay1 := e.insert(b1, items.Payment, 5)
		paper1 := e.insert(b1, items.Paperless, 1)
		pay2 := e.insert(b2, items.Payment, 3)
		e.insert(b3, items.Payment, 2)
		e.fail("shard1", "b1", pay1[0], "cis: 422 rejected: account closed")
		e.fail("shard1", "b1", pay1[1], "cis: 422 rejected: amount too large")
		e.fail("shard1", "b1", paper1[0], "related rows missing")
		e.fail("shard2", "b2", pay2[0], "cis: 422 rejected: unknown account")

		// billers list
		code, out, errOut := e.cli("billers", "list", "--json")
		require.Equal(t, exitOK, code, errOut)
		bs := decodeJSON[[]catalog.Biller](t, out)
		require.Len(t, bs, 3)
		require.Equal(t, []string{"b1", "b2", "b3"}, []string{bs[0].ID, bs[1].ID, bs[2].ID})
		require.Equal(t, []catalog.Mode{catalog.ModePoll, catalog.ModePoll, catalog.ModeOff}, []catalog.Mode{bs[0].Mode, bs[1].Mode, bs[2].Mode})
		require.Equal(t, "shard2", bs[1].Shard)
		require.True(t, bs[0].CutoverAt.Equal(b1.CutoverAt), "cut-over %s, want %s", bs[0].CutoverAt, b1.CutoverAt)
		code, out, errOut = e.cli("billers", "list")
		require.Equal(t, exitOK, code, errOut)
		require.Contains(t, out, "BILLER")
		require.Regexp(t, `(?m)^b3\s+shard1\s+off\s+-\s`, out)

		// status
		code, out, errOut = e.cli("status", "--json")
		require.Equal(t, exitOK, code, errOut)
		backlog := decodeJSON[[]pump.BillerBacklog](t, out)
		require.Len(t, backlog, 3)
		byID := map[string]pump.BillerBacklog{}
		for _, b := range backlog {
			byID[b.BillerID] = b
		}
		require.Equal(t, int64(3), byID["b1"].Pending, "b1's payments without a control record")
		require.Equal(t, int64(3), byID["b1"].Failed())
		require.Equal(t, int64(2), byID["b2"].Pending)
		require.Equal(t, int64(1), byID["b2"].Failed())
		require.Positive(t, byID["b1"].OldestPendingAge)
		require.Zero(t, byID["b3"].Pending, "an off biller's items are not this pump's backlog")
		require.Equal(t, catalog.ModeOff, byID["b3"].Mode)
		code, out, errOut = e.cli("status")
		require.Equal(t, exitOK, code, errOut)
		require.Contains(t, out, "OLDEST PENDING")
		require.Regexp(t, `(?m)^\s*b1\s+shard1\s+poll\s+3\s`, out)

		// inspect
		failedID := msgID("shard1", pay1[0])
		code, out, errOut = e.cli("inspect", failedID, "--json")
		require.Equal(t, exitOK, code, errOut)
		in := decodeJSON[inspection](t, out)
		require.Equal(t, failedID, in.MessageID)
		require.Equal(t, "shard1", in.Shard)
		require.Equal(t, store.StatusFailed, in.Control.Status)
		require.Equal(t, "b1", in.Control.BillerID)
		require.Equal(t, "cis: 422 rejected: account closed", in.Control.LastError)
		require.False(t, in.Control.FailedAt.IsZero())
		require.Equal(t, catalog.ModePoll, in.BillerMode)
		require.True(t, in.Cutover.Equal(b1.CutoverAt))
		code, out, errOut = e.cli("inspect", failedID)
		require.Equal(t, exitOK, code, errOut)
		require.Regexp(t, `(?m)^status\s+Failed$`, out)
		require.Regexp(t, `(?m)^last error\s+cis: 422 rejected: account closed$`, out)
		require.Contains(t, out, "b1 (mode poll, cut-over ")

		// retry --dry-run lists what would move and changes nothing.
		failed := []struct {
			shard string
			key   store.ItemKey
		}{{"shard1", pay1[0]}, {"shard1", pay1[1]}, {"shard1", paper1[0]}, {"shard2", pay2[0]}}
		before := map[string]store.Control{}
		for _, f := range failed {
			before[msgID(f.shard, f.key)] = e.control(f.shard, f.key)
		}
		code, out, errOut = e.cli("retry", "--biller", "b1", "--dry-run", "--json")
		require.Equal(t, exitOK, code, errOut)
		would := decodeJSON[[]pump.Retried](t, out)
		require.Len(t, would, 3)
		for _, r := range would {
			require.Equal(t, "shard1", r.Shard)
			require.Equal(t, "b1", r.BillerID)
			require.Equal(t, store.StatusFailed, r.Status, "a dry run reports the records as they are")
		}
		code, out, errOut = e.cli("retry", "--item-type", "payment", "--dry-run")
		require.Equal(t, exitOK, code, errOut)
		require.Contains(t, out, "would retry "+msgID("shard2", pay2[0])+" (biller b2, last error: cis: 422 rejected: unknown account)")
		require.Contains(t, out, "would retry 3 item(s)")
		for _, f := range failed {
			require.Equal(t, before[msgID(f.shard, f.key)], e.control(f.shard, f.key), "a dry run changed %s", msgID(f.shard, f.key))
		}

		// Bad input: exit code 2 and a message naming the problem.
		bad := []struct {
			args []string
			want string
		}{
			{[]string{"retry", "--biller", "nobody"}, "not found"},
			{[]string{"retry", "--biller", "nobody", "--dry-run"}, "biller nobody: biller not found"},
			{[]string{"retry"}, "name what to retry"},
			{[]string{"retry", "--item-type", "refund"}, "refund"},
			{[]string{"retry", "--since", "yesterday"}, "--since"},
			{[]string{"retry", "--ids", "shard9:payment:1"}, `unknown shard "shard9"`},
			{[]string{"retry", "--ids", "nonsense"}, "shard:itemType:itemId"},
			{[]string{"inspect", "shard1:payment:987654"}, "item shard1:payment:987654 not found"},
			{[]string{"inspect", msgID("shard1", pay1[4])}, "has no control record yet"},
			{[]string{"inspect", "shard9:payment:1"}, `unknown shard "shard9"`},
			{[]string{"inspect", "shard1:refund:1"}, "refund"},
			{[]string{"inspect", "nonsense"}, "shard:itemType:itemId"},
			{[]string{"billers", "set-mode", "b1", "sideways"}, `invalid mode: "sideways"`},
			{[]string{"billers", "set-mode", "nobody", "poll"}, "biller not found"},
			{[]string{"billers", "set-mode", "b1"}, "accepts 2 arg(s)"},
		}
		for _, c := range bad {
			code, out, errOut := e.cli(c.args...)
			require.Equal(t, exitBadInput, code, "%v: stdout %q stderr %q", c.args, out, errOut)
			require.Contains(t, errOut, c.want, "%v", c.args)
			require.Empty(t, out, "%v", c.args)
		}
		for _, f := range failed {
			require.Equal(t, before[msgID(f.shard, f.key)], e.control(f.shard, f.key), "refused input changed %s", msgID(f.shard, f.key))
		}

		// Provisioned topics, as for a running pump; then retry for real.
		code, _, errOut = e.cli("provision")
		require.Equal(t, exitOK, code, errOut)
		code, out, errOut = e.cli("retry", "--biller", "b1", "--item-type", "payment", "--json")
		require.Equal(t, exitOK, code, errOut)
		retried := decodeJSON[[]pump.Retried](t, out)
		require.Len(t, retried, 2)
		for _, r := range retried {
			require.Equal(t, store.StatusQueued, r.Status)
			prev := before[msgID(r.Shard, r.ItemKey)]
			require.Equal(t, prev.Version+1, r.Version)
			require.Equal(t, prev.LastError, r.LastError, "the last error is kept")
			c := e.control(r.Shard, r.ItemKey)
			require.Equal(t, store.StatusQueued, c.Status)
			require.Equal(t, r.Version, c.Version)
			require.Zero(t, c.Attempts)
		}
		code, out, errOut = e.cli("retry", "--ids", msgID("shard2", pay2[0]))
		require.Equal(t, exitOK, code, errOut)
		require.Contains(t, out, "retried "+msgID("shard2", pay2[0])+" (biller b2, last error: cis: 422 rejected: unknown account)")
		require.Contains(t, out, "retried 1 item(s)")
		require.Equal(t, store.StatusFailed, e.control("shard1", paper1[0]).Status, "not selected by the filter")
		require.Equal(t, before[msgID("shard1", paper1[0])], e.control("shard1", paper1[0]))

		// Only an item consumer runs (no publisher, so no rescuer and no
		// announcements): the retried items reach the CIS through the
		// messages retry published.
		require.NoError(t, e.app.OpenBus(ctx))
		r, err := e.app.NewRunner([]string{app.JobItemConsumer}, nil)
		require.NoError(t, err)
		require.NoError(t, r.Start(ctx))
		t.Cleanup(func() { r.Stop() })
		sent := []struct {
			shard string
			key   store.ItemKey
		}{{"shard1", pay1[0]}, {"shard1", pay1[1]}, {"shard2", pay2[0]}}
		require.Eventually(t, func() bool {
			for _, s := range sent {
				c, err := e.app.Shards[s.shard].ControlGet(ctx, s.key)
				if err != nil || c.Status != store.StatusProcessed {
					return false
				}
			}
			return true
		}, time.Minute, 50*time.Millisecond)
		for _, s := range sent {
			_, ok := e.mock.AcceptedAt(msgID(s.shard, s.key))
			require.True(t, ok, "%s not accepted by the CIS", msgID(s.shard, s.key))
		}
		require.Equal(t, 3, e.mock.Stats().Requests, "only the retried items were sent")
		require.Equal(t, store.StatusFailed, e.control("shard1", paper1[0]).Status)

		code, out, errOut = e.cli("status", "--json")
		require.Equal(t, exitOK, code, errOut)
		for _, b := range decodeJSON[[]pump.BillerBacklog](t, out) {
			switch b.BillerID {
			case "b1":
				require.Equal(t, int64(2), b.ByStatus[store.StatusProcessed])
				require.Equal(t, int64(1), b.Failed())
			case "b2":
				require.Equal(t, int64(1), b.ByStatus[store.StatusProcessed])
				require.Zero(t, b.Failed())
			}
		}
	})
}

// A biller moves from off to poll while the pump runs and the application
// keeps writing: only items created at or after the recorded cut-over are
// delivered; the earlier ones stay with the old pump, untouched.
func TestSetModeToPollMidStreamLeavesEarlierItemsAlone(t *testing.T) {
	eachOpsBackend(t, func(t *testing.T, e *opsEnv) {
		ctx := context.Background()
		moving := e.biller("b1", "shard1", catalog.ModeOff)
		steady := e.biller("b2", "shard2", catalog.ModePoll)

		runCtx, stopRun := context.WithCancel(ctx)
		var runOut, runErr syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- run(runCtx, func() {}, []string{"run", "--config", e.cfgPath}, &runOut, &runErr)
		}()
		stopped := false
		stop := func() {
			if !stopped {
				stopped = true
				stopRun()
				<-done
			}
		}
		t.Cleanup(stop)

		// The application writes one item of b1 every 10 ms until told to stop.
		var mu sync.Mutex
		var written []store.ItemKey
		writerDone := make(chan struct{})
		quit := make(chan struct{})
		go func() {
			defer close(writerDone)
			for i := 0; ; i++ {
				select {
				case <-quit:
					return
				case <-time.After(10 * time.Millisecond):
				}
				typ := items.Payment
				if i%3 == 2 {
					typ = items.Paperless
				}
				keys, err := e.app.Shards["shard1"].(store.DemoSource).DemoItemsInsert(ctx, []store.DemoItem{{ItemType: typ, BillerID: moving.ID, AmountCents: int64(100 + i)}})
				if err != nil {
					t.Errorf("insert: %v", err)
					return
				}
				mu.Lock()
				written = append(written, keys...)
				mu.Unlock()
			}
		}()
		count := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(written)
		}

		// The pump is running: a poll biller's items are delivered while
		// b1's pile up untouched.
		steadyKeys := e.insert(steady, items.Payment, 5)
		require.Eventually(t, func() bool {
			for _, k := range steadyKeys {
				if c, err := e.app.Shards["shard2"].ControlGet(ctx, k); err != nil || c.Status != store.StatusProcessed {
					return false
				}
			}
			return true
		}, time.Minute, 50*time.Millisecond, "the running pump did not deliver the poll biller's items (run stderr: %s)", &runErr)
		require.Eventually(t, func() bool { return count() >= 30 }, time.Minute, 10*time.Millisecond)

		code, out, errOut := e.cli("billers", "set-mode", "b1", "poll", "--json")
		require.Equal(t, exitOK, code, errOut)
		moved := decodeJSON[catalog.Biller](t, out)
		require.Equal(t, catalog.ModePoll, moved.Mode)
		require.False(t, moved.CutoverAt.IsZero(), "leaving off records the cut-over")
		cutover := moved.CutoverAt

		// The writer's insert in flight while set-mode ran may have been
		// stamped before the cut-over and counted after it: one more than
		// 30 leaves 30 that started after set-mode returned.
		atSwitch := count()
		require.Eventually(t, func() bool { return count() >= atSwitch+31 }, time.Minute, 10*time.Millisecond)
		close(quit)
		<-writerDone

		var earlier, later []store.ItemKey
		for _, k := range written {
			src, err := e.app.Shards["shard1"].ItemSource(ctx, k)
			require.NoError(t, err)
			if src.CreatedAt.Before(cutover) {
				earlier = append(earlier, k)
			} else {
				later = append(later, k)
			}
		}
		require.GreaterOrEqual(t, len(earlier), 30, "items written before set-mode returned")
		require.GreaterOrEqual(t, len(later), 30, "items written after set-mode returned")

		require.Eventually(t, func() bool {
			for _, k := range later {
				if c, err := e.app.Shards["shard1"].ControlGet(ctx, k); err != nil || c.Status != store.StatusProcessed {
					return false
				}
			}
			return true
		}, time.Minute, 50*time.Millisecond, "items created after the cut-over were not all delivered")
		// A few more publisher rounds, in which an earlier item would be
		// announced and claimed if the watermark did not hold.
		time.Sleep(5 * 200 * time.Millisecond)
		stop()
		e.requireNoSecret(runOut.String() + runErr.String())

		for _, k := range earlier {
			_, err := e.app.Shards["shard1"].ControlGet(ctx, k)
			require.ErrorIs(t, err, store.ErrNotFound, "item %s created before the cut-over has a control record", k)
			_, sent := e.mock.AcceptedAt(msgID("shard1", k))
			require.False(t, sent, "item %s created before the cut-over reached the CIS", k)
		}
		for _, k := range later {
			_, sent := e.mock.AcceptedAt(msgID("shard1", k))
			require.True(t, sent, "item %s not accepted by the CIS", k)
		}
		st := e.mock.Stats()
		require.Equal(t, len(later)+len(steadyKeys), st.UniqueAccepted)
		require.Zero(t, st.Duplicates)

		code, out, errOut = e.cli("status", "--json")
		require.Equal(t, exitOK, code, errOut)
		for _, b := range decodeJSON[[]pump.BillerBacklog](t, out) {
			if b.BillerID == "b1" {
				require.Equal(t, int64(len(later)), b.ByStatus[store.StatusProcessed])
				require.Zero(t, b.Pending, "earlier items are not pending for this pump")
			}
		}
	})
}

// A password given as ${VAR} in a DSN is never printed, even when every
// command fails to reach the database (connection refused).
func TestOperatorCommandsNeverPrintTheDatabasePassword(t *testing.T) {
	t.Parallel()
	secret := fmt.Sprintf("S3cret%016x", rand.Uint64())
	envVar := fmt.Sprintf("OPSTEST_DOWN_PGPASS_%d", rand.Uint32())
	require.NoError(t, os.Setenv(envVar, secret))
	t.Cleanup(func() { os.Unsetenv(envVar) })
	// Port 1 on the loopback address: nothing listens there.
	dsn := fmt.Sprintf(`"postgres://dbadmin:${%s}@127.0.0.1:1/billing?sslmode=disable&connect_timeout=2"`, envVar)
	cfg := writeConfig(t, "catalog: {driver: postgres, dsn: "+dsn+"}\nshards: [{name: shard1, driver: postgres, dsn: "+dsn+"}]\nlog: {level: debug}\n")
	for _, args := range [][]string{
		{"status"}, {"status", "--json"},
		{"inspect", "shard1:payment:1"},
		{"retry", "--biller", "b1", "--dry-run"},
		{"retry", "--ids", "shard1:payment:1"},
		{"billers", "list"},
		{"billers", "set-mode", "b1", "poll"},
		{"migrate"},
	} {
		code, out, errOut := runCLI(t, append(args, "--config", cfg)...)
		require.Equal(t, exitFailure, code, "%v: %s", args, errOut)
		require.NotEmpty(t, errOut, "%v: the failure is reported", args)
		require.NotContains(t, out+errOut, secret, "%v printed the password", args)
	}
}
