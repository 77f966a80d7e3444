package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis/mockcis"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlite"
)

// publish-item announces an item that a running pump (`datapump run`)
// then delivers end to end; the processes share an external NATS server.
func TestPublishItemIsDeliveredEndToEnd(t *testing.T) {
	t.Parallel()
	natsURL := os.Getenv("DATAPUMP_TEST_NATS_URL")
	if natsURL == "" {
		t.Skip("set DATAPUMP_TEST_NATS_URL to run")
	}
	ctx := context.Background()
	mock := mockcis.New(mockcis.Options{})
	srv := httptest.NewServer(mock)
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	prefix := fmt.Sprintf("pi%d-", rand.Uint32())
	t.Cleanup(func() { deleteStreams(t, natsURL, prefix) })
	cfgPath := filepath.Join(dir, "c.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte(fmt.Sprintf(`owner: pi
catalog: {driver: sqlite, dsn: %[1]s/c.db}
shards: [{name: shard1, driver: sqlite, dsn: %[1]s/s1.db}]
bus: {nats: {url: %[2]q}, topic_prefix: %[3]s}
publisher: {interval: 200ms, lease_ttl: 2s, reconcile_after: 1h}
log: {level: error}
`, dir, natsURL, prefix)), 0o600))
	code, _, errOut := runCLI(t, "migrate", "--config", cfgPath)
	require.Equal(t, exitOK, code, errOut)
	// As in a deployment, the topics and subscriptions exist before any
	// source publishes: a topic's messages are kept only for subscriptions
	// that exist when they arrive (the pump's own start provisions too,
	// but the announcement below must not race it).
	code, _, errOut = runCLI(t, "provision", "--config", cfgPath)
	require.Equal(t, exitOK, code, errOut)

	// The source application's side: its row, and the biller in direct mode.
	cat, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(dir, "c.db")})
	require.NoError(t, err)
	defer cat.Close()
	require.NoError(t, cat.BillerUpsert(ctx, catalog.Biller{ID: "b1", Shard: "shard1", Mode: catalog.ModeDirect,
		CutoverAt: time.Now().Add(-time.Hour), CIS: catalog.CISEndpoint{BaseURL: srv.URL, Auth: catalog.AuthNone}}))
	reg := items.Builtin()
	shard, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(dir, "s1.db"), Sources: []store.Source{reg[0].Source, reg[1].Source}})
	require.NoError(t, err)
	defer shard.Close()
	require.NoError(t, shard.DemoSchemaCreate(ctx))
	keys, err := shard.DemoItemsInsert(ctx, []store.DemoItem{{ItemType: items.Payment, BillerID: "b1", AmountCents: 1234}})
	require.NoError(t, err)

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		done <- run(runCtx, func() {}, []string{"run", "--config", cfgPath}, new(nopWriter), new(nopWriter))
	}()
	t.Cleanup(func() { stop(); <-done })

	id := fmt.Sprint(keys[0].ItemID)
	code, out, errOut := runCLI(t, "publish-item", "--config", cfgPath, "--shard", "shard1", "--item-type", "payment", "--id", id, "--biller", "b1")
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "published shard1:payment:"+id)

	require.Eventually(t, func() bool {
		c, err := shard.ControlGet(ctx, keys[0])
		return err == nil && c.Status == store.StatusProcessed
	}, time.Minute, 50*time.Millisecond)
	c, err := shard.ControlGet(ctx, keys[0])
	require.NoError(t, err)
	require.Equal(t, "direct", c.Origin)
	_, accepted := mock.AcceptedAt("shard1:payment:" + id)
	require.True(t, accepted)
	require.Equal(t, 1, mock.Stats().Requests)
}

func TestPublishItemRefusesInvalidInput(t *testing.T) {
	t.Parallel()
	cfg := writeConfig(t, `catalog: {driver: sqlite, dsn: DIR/c.db}
shards: [{name: shard1, driver: sqlite, dsn: DIR/s1.db}]
`)
	cases := map[string]struct {
		args []string
		want string
	}{
		"unknown type":  {[]string{"--shard", "shard1", "--item-type", "refund", "--id", "1", "--biller", "b1"}, "itemType"},
		"zero id":       {[]string{"--shard", "shard1", "--item-type", "payment", "--id", "0", "--biller", "b1"}, "itemId"},
		"no biller":     {[]string{"--shard", "shard1", "--item-type", "payment", "--id", "5"}, "billerId"},
		"bad shard":     {[]string{"--shard", "shard 9", "--item-type", "payment", "--id", "5", "--biller", "b1"}, "shard"},
		"unknown shard": {[]string{"--shard", "shard9", "--item-type", "payment", "--id", "5", "--biller", "b1"}, "shard9"},
		"bad time":      {[]string{"--shard", "shard1", "--item-type", "payment", "--id", "5", "--biller", "b1", "--created-at", "today"}, "--created-at"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			code, _, errOut := runCLI(t, append([]string{"publish-item", "--config", cfg}, tc.args...)...)
			require.Equal(t, exitBadInput, code, errOut)
			require.Contains(t, errOut, tc.want)
		})
	}
}

// deleteStreams removes the streams a test made on the shared server.
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
		if strings.HasPrefix(n, prefix) {
			_ = js.DeleteStream(ctx, n)
		}
	}
}

type nopWriter struct{}

func (*nopWriter) Write(p []byte) (int, error) { return len(p), nil }
