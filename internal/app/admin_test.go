package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/admin"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/telemetry"
)

// A running pump's admin server shows delivered counts, backlog gauges and
// every biller on the status page, and is ready; once the shard databases
// are gone, /readyz fails and names them.
func TestAdminServerReportsProgressAndFailsReadinessWhenTheStoreStops(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, func(cfg *config.Config) { cfg.HTTP.Addr = "127.0.0.1:0" })
		b1 := h.biller("b1", "shard1", catalog.ModePoll)
		b2 := h.biller("b2", "shard2", catalog.ModePoll)
		h.biller("b3", "shard1", catalog.ModeOff)
		ws := append(h.insert(b1, 20, nil), h.insert(b2, 10, nil)...)
		r := h.start()
		require.NotEmpty(t, r.AdminAddr, "the runner reports the admin server's bound address")
		base := "http://" + r.AdminAddr
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)

		code, body := httpGet(t, base+"/healthz")
		require.Equal(t, http.StatusOK, code, body)
		code, body = httpGet(t, base+"/readyz")
		require.Equal(t, http.StatusOK, code, body)

		// The backlog gauges are refreshed every publisher interval; wait
		// for a refresh that has seen every item delivered: nothing left in
		// any status the gauges count.
		open := []string{"Pending", "New", "Fetched", "Queued", "Processing", "Failed", "Skipped"}
		require.Eventually(t, func() bool {
			fams, err := scrapeMetrics(base)
			if err != nil {
				return false
			}
			for _, id := range []string{"b1", "b2"} {
				for _, status := range open {
					if metricValue(fams, telemetry.MetricBacklog, map[string]string{"biller": id, "status": status}) != 0 {
						return false
					}
				}
			}
			return true
		}, 30*time.Second, 100*time.Millisecond)
		fams, err := scrapeMetrics(base)
		require.NoError(t, err)
		require.Equal(t, float64(len(ws)), metricValue(fams, telemetry.MetricItems, map[string]string{"stage": "item_consumer", "outcome": "delivered"}))
		for _, id := range []string{"b1", "b2", "b3"} {
			require.Contains(t, seriesBillers(fams[telemetry.MetricBacklog]), id, "backlog gauges of biller %s", id)
			require.Equal(t, float64(-1), metricValue(fams, telemetry.MetricBacklog, map[string]string{"biller": id, "status": "Processed"}),
				"no Processed gauge for biller %s: the refresher does not count the history", id)
		}
		require.Zero(t, metricValue(fams, telemetry.MetricBacklog, map[string]string{"biller": "b1", "status": "Pending"}))

		code, body = httpGet(t, base+"/")
		require.Equal(t, http.StatusOK, code, body)
		require.ElementsMatch(t, []string{"b1", "b2", "b3"}, pageBillers(body))

		code, body = httpGet(t, base+"/api/status")
		require.Equal(t, http.StatusOK, code, body)
		var st admin.Status
		require.NoError(t, json.Unmarshal([]byte(body), &st))
		require.Len(t, st.Billers, 3)
		_, counted := st.Billers[0].ByStatus[store.StatusProcessed]
		require.False(t, counted, "the status page does not count Processed records")
		require.Zero(t, st.Billers[0].ByStatus[store.StatusQueued])
		require.Contains(t, st.Billers[0].ByStatus, store.StatusQueued, "every other status is counted")

		// Stop the shard databases under the running server.
		for _, name := range []string{"shard1", "shard2"} {
			require.NoError(t, h.app.Shards[name].Close())
		}
		code, body = httpGet(t, base+"/readyz")
		require.Equal(t, http.StatusServiceUnavailable, code, body)
		require.Contains(t, body, "shard shard1")
		require.Contains(t, body, "shard shard2")
		code, body = httpGet(t, base+"/api/status")
		require.Equal(t, http.StatusServiceUnavailable, code, body)
		code, _ = httpGet(t, base+"/healthz")
		require.Equal(t, http.StatusOK, code, "the process itself is still up")
	})
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// scrapeMetrics reads /metrics and parses the text exposition format. It
// does not fail the test, so it can run inside require.Eventually.
func scrapeMetrics(base string) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: status %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// metricValue returns the value of the counter or gauge series with
// exactly these labels, or -1 when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
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

// seriesBillers lists the biller label of every series of a family.
func seriesBillers(f *dto.MetricFamily) []string {
	var out []string
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "biller" {
				out = append(out, l.GetValue())
			}
		}
	}
	return out
}

var billerRow = regexp.MustCompile(`<tr [^>]*data-biller="([^"]*)"`)

// pageBillers lists the biller of every row of the status page's table.
func pageBillers(html string) []string {
	var out []string
	for _, m := range billerRow.FindAllStringSubmatch(html, -1) {
		out = append(out, m[1])
	}
	return out
}
