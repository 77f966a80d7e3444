package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/admin"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/store"
)

// fakeCatalog is a read-only list of billers.
type fakeCatalog struct {
	catalog.Catalog
	billers []catalog.Biller
}

func (c fakeCatalog) BillerList(context.Context) ([]catalog.Biller, error) { return c.billers, nil }

// fakeShard answers the reads the status page makes; any other call panics.
type fakeShard struct {
	store.Store
	counts  []store.StatusCount
	pending []store.BillerPending
	failed  []store.Control
	err     error
	now     time.Time
}

// ControlCountByStatus refuses to count Processed records: the status page
// must not read the history.
func (s fakeShard) ControlCountByStatus(_ context.Context, p store.ControlCountParams) ([]store.StatusCount, error) {
	if p.WithProcessed {
		return nil, errors.New("the status page counted Processed records")
	}
	return s.counts, s.err
}

func (s fakeShard) PendingCount(context.Context, store.PendingCountParams) ([]store.BillerPending, error) {
	return s.pending, s.err
}

func (s fakeShard) Now(context.Context) (time.Time, error) { return s.now, s.err }

func (s fakeShard) ControlList(_ context.Context, p store.ControlListParams) ([]store.Control, error) {
	if len(p.Statuses) != 1 || p.Statuses[0] != store.StatusFailed {
		return nil, errors.New("unexpected filter")
	}
	return s.failed, s.err
}

func newServer(t *testing.T, shard fakeShard, ready func(context.Context) error) *httptest.Server {
	t.Helper()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	shard.now = now
	srv := &admin.Server{
		Catalog: fakeCatalog{billers: []catalog.Biller{
			{ID: "b1", Shard: "shard1", Mode: catalog.ModePoll, CutoverAt: now.Add(-time.Hour)},
			{ID: "b2", Shard: "shard1", Mode: catalog.ModeOff},
			{ID: `b<3>"`, Shard: "shard1", Mode: catalog.ModeDirect, CutoverAt: now.Add(-time.Hour)},
		}},
		Shards:   map[string]store.Store{"shard1": shard},
		Ready:    ready,
		Registry: prometheus.NewRegistry(),
		Refresh:  7 * time.Second,
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return ts
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url) //nolint:noctx // test server
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

var rowRE = regexp.MustCompile(`<tr class="biller ?([a-z]*)" data-biller="([^"]*)">`)

func TestStatusPageListsEveryBillerWithCountsAndFailures(t *testing.T) {
	t.Parallel()
	ts := newServer(t, fakeShard{
		counts: []store.StatusCount{
			{BillerID: "b1", Status: store.StatusQueued, Count: 41},
			{BillerID: "b1", Status: store.StatusFailed, Count: 2},
			{BillerID: "gone", Status: store.StatusSkipped, Count: 5},
		},
		pending: []store.BillerPending{{BillerID: "b1", Pending: 9, OldestCreatedAt: time.Date(2026, 3, 1, 11, 58, 30, 0, time.UTC)}},
		failed: []store.Control{{
			ItemKey: store.ItemKey{ItemType: "payment", ItemID: 7}, BillerID: "b1", Status: store.StatusFailed, Attempts: 3,
			LastError: `cis: 422 <script>alert(1)</script>`, FailedAt: time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC),
		}},
	}, nil)

	code, page := get(t, ts.URL+"/")
	require.Equal(t, http.StatusOK, code)
	var ids, classes []string
	for _, m := range rowRE.FindAllStringSubmatch(page, -1) {
		classes = append(classes, m[1])
		ids = append(ids, m[2])
	}
	// Every catalog biller, escaped, and records of a biller no longer in
	// the catalog, in id order.
	require.Equal(t, []string{"b1", "b2", "b&lt;3&gt;&#34;", "gone"}, ids)
	require.Equal(t, []string{"", "off", "", "off"}, classes)
	require.Contains(t, page, `<meta http-equiv="refresh" content="7">`)
	require.Contains(t, page, "<td>9</td><td>1m30s</td>", "pending count and oldest pending age of b1")
	require.Contains(t, page, "<td>1m30s</td>\n<td>0</td><td>41</td><td>0</td>\n<td class=\"failed\">2</td><td>0</td></tr>",
		"b1's Fetched, Queued, Processing, Failed and Skipped")
	require.Contains(t, page, `<td class="failed">2</td>`)
	require.NotContains(t, page, "<th>Processed</th>", "Processed records are not counted, so not shown")
	require.Contains(t, page, `id="processed-note"`, "the page says where they are counted")
	require.Contains(t, page, "<td>shard1:payment:7</td>")
	require.Contains(t, page, "cis: 422 &lt;script&gt;alert(1)&lt;/script&gt;")
	require.NotContains(t, page, "<script>")
	require.NotContains(t, page, `id="error"`)

	code, body := get(t, ts.URL+"/api/status")
	require.Equal(t, http.StatusOK, code)
	var st admin.Status
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	require.Len(t, st.Billers, 4)
	require.Equal(t, int64(9), st.Billers[0].Pending)
	require.Equal(t, map[store.Status]int64{
		store.StatusNew: 0, store.StatusFetched: 0, store.StatusQueued: 41, store.StatusProcessing: 0, store.StatusFailed: 2, store.StatusSkipped: 0,
	}, st.Billers[0].ByStatus, "every status counted, zero included, and no Processed")
	require.Equal(t, 90*time.Second, st.Billers[0].OldestPendingAge)
	require.Equal(t, []admin.Failure{{MessageID: "shard1:payment:7", BillerID: "b1", Attempts: 3, Error: `cis: 422 <script>alert(1)</script>`, FailedAt: time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)}}, st.Failures)
}

func TestStatusShowsAShardErrorAndAPIStatusFails(t *testing.T) {
	t.Parallel()
	ts := newServer(t, fakeShard{err: errors.New("connection refused")}, nil)
	code, page := get(t, ts.URL+"/")
	require.Equal(t, http.StatusOK, code)
	require.Regexp(t, `<p class="error" id="error">[^<]*shard shard1: connection refused`, page)
	require.Len(t, rowRE.FindAllStringSubmatch(page, -1), 3, "the catalog's billers are still listed")
	require.Contains(t, page, `id="no-failures"`)

	code, body := get(t, ts.URL+"/api/status")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "connection refused")
}

func TestReadyzFollowsTheReadinessCheck(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var down error
	ts := newServer(t, fakeShard{}, func(ctx context.Context) error {
		_, ok := ctx.Deadline()
		if !ok {
			return errors.New("no deadline on the readiness check")
		}
		mu.Lock()
		defer mu.Unlock()
		return down
	})
	code, body := get(t, ts.URL+"/readyz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ready\n", body)

	mu.Lock()
	down = errors.New("shard shard1: database is closed")
	mu.Unlock()
	code, body = get(t, ts.URL+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "not ready: shard shard1: database is closed\n", body)

	code, body = get(t, ts.URL+"/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)

	code, _ = get(t, ts.URL+"/metrics")
	require.Equal(t, http.StatusOK, code)
	code, _ = get(t, ts.URL+"/nothing-here")
	require.Equal(t, http.StatusNotFound, code)
}

func TestServeStopsWhenTheContextEnds(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &admin.Server{Catalog: fakeCatalog{}, Shards: map[string]store.Store{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	code, _ := get(t, "http://"+ln.Addr().String()+"/healthz")
	require.Equal(t, http.StatusOK, code)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	_, err = net.Dial("tcp", ln.Addr().String())
	require.Error(t, err, "the listener is closed")
}
