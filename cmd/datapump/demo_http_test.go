package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/telemetry"
)

// chromiumPath is Debian's chromium, which the browser test drives.
const chromiumPath = "/usr/bin/chromium"

// While `datapump demo --http ADDR` runs, /metrics shows items delivered
// and the backlog gauges of every biller, /readyz is 200, and the status
// page rendered by headless Chromium lists every biller.
func TestDemoServesMetricsReadinessAndStatusPage(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	base := "http://" + addr
	// Enough items at a slow enough rate that the demo is still writing
	// when the checks are done; the test stops it.
	ctx, stop := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, func() {}, []string{"demo", "--http", addr, "--items", "20000", "--insert-rate", "200", "--timeout", "5m"}, &stdout, &stderr)
	}()
	stopped := false
	stopDemo := func() int {
		if stopped {
			return -1
		}
		stopped = true
		stop()
		select {
		case code := <-done:
			return code
		case <-time.After(time.Minute):
			t.Errorf("the demo did not stop within a minute of being cancelled")
			return -1
		}
	}
	t.Cleanup(func() { stopDemo() })

	billers := make([]string, 20)
	for i := range billers {
		billers[i] = fmt.Sprintf("b%03d", i+1)
	}

	require.Eventually(t, func() bool {
		code, _, err := tryGet(base + "/readyz")
		return err == nil && code == http.StatusOK
	}, time.Minute, 50*time.Millisecond, "/readyz never answered 200 (stderr: %s)", &stderr)

	var fams map[string]*dto.MetricFamily
	require.Eventually(t, func() bool {
		var err error
		if fams, err = scrape(base); err != nil {
			return false
		}
		// The leader gauge is set when a publisher round ends, which can be
		// after the first items are delivered; the backlog gauges once the
		// refresher has read the shards.
		return sampleValue(fams, telemetry.MetricItems, map[string]string{"stage": "item_consumer", "outcome": "delivered"}) > 0 &&
			sampleValue(fams, telemetry.MetricBacklog, map[string]string{"biller": billers[len(billers)-1], "status": "Pending"}) >= 0 &&
			sampleValue(fams, telemetry.MetricPublisherLeader, map[string]string{}) == 1
	}, time.Minute, 200*time.Millisecond, "no delivered items, backlog counts or publisher leader on /metrics")
	for _, id := range billers {
		for _, status := range []string{"Pending", "Queued", "Failed"} {
			require.GreaterOrEqual(t, sampleValue(fams, telemetry.MetricBacklog, map[string]string{"biller": id, "status": status}), float64(0),
				"no %s series for biller %s status %s", telemetry.MetricBacklog, id, status)
		}
		require.Equal(t, float64(-1), sampleValue(fams, telemetry.MetricBacklog, map[string]string{"biller": id, "status": "Processed"}),
			"a Processed series for biller %s: the refresher must not count the history", id)
		require.GreaterOrEqual(t, sampleValue(fams, telemetry.MetricOldestPendingAge, map[string]string{"biller": id}), float64(0))
	}
	require.Equal(t, float64(1), sampleValue(fams, telemetry.MetricPublisherLeader, map[string]string{}))

	code, body, err := tryGet(base + "/readyz")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)

	t.Run("status page in chromium", func(t *testing.T) {
		if _, err := os.Stat(chromiumPath); err != nil {
			t.Skipf("%s not found (apt-get install chromium to run this test): %v", chromiumPath, err)
		}
		rows := browserBillerRows(t, base+"/")
		require.Len(t, rows, len(billers), "rows: %v", rows)
		for i, id := range billers {
			require.Equal(t, id, rows[i].ID)
			require.Equal(t, id, rows[i].Cell, "the first cell shows the biller")
			if (i+1)%5 == 0 {
				require.Equal(t, "off", rows[i].Mode)
			} else {
				require.Equal(t, "poll", rows[i].Mode)
			}
		}
	})

	// The demo was still running all along: it stops only when told.
	select {
	case code := <-done:
		stopped = true
		t.Fatalf("the demo ended (exit %d) before the checks were done: %s", code, &stderr)
	default:
	}
	stopDemo()
	_, _, err = tryGet(base + "/readyz")
	require.Error(t, err, "the admin server stops with the demo")
}

// billerRow is one row of the status page's biller table as rendered.
type billerRow struct {
	ID   string `json:"id"`
	Cell string `json:"cell"`
	Mode string `json:"mode"`
}

// browserBillerRows loads the page in headless Chromium and reads the
// biller table's rows from the rendered DOM.
func browserBillerRows(t *testing.T, url string) []billerRow {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	// Registered after TempDir, so the browser exits before its profile
	// folder is removed.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	ctx, cancel := context.WithTimeout(browserCtx, time.Minute)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS(`table#billers tbody tr[data-biller]`)),
	))
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[[]billerRow](
		`Array.from(document.querySelectorAll('table#billers tr[data-biller]')).map(r => ({id: r.dataset.biller, cell: r.cells[0].textContent.trim(), mode: r.cells[2].textContent.trim()}))`))
	require.NoError(t, err)
	return rows
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func tryGet(url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// scrape reads /metrics and parses the text exposition format.
func scrape(base string) (map[string]*dto.MetricFamily, error) {
	code, body, err := tryGet(base + "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("/metrics: status %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(strings.NewReader(body))
}

// sampleValue is the value of the counter or gauge series with exactly
// these labels, or -1 when there is none.
func sampleValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	for _, m := range fams[name].GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				match = false
			}
		}
		if !match {
			continue
		}
		if m.Counter != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	return -1
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
