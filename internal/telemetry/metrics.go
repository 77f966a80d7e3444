package telemetry

import (
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric names, kept in one place: the Grafana dashboard and the alerts
// query exactly these (TestDashboardQueriesOnlyExportedMetrics checks the
// dashboard against the registry).
const (
	MetricItems               = "datapump_items_total"
	MetricBacklog             = "datapump_backlog_items"
	MetricOldestPendingAge    = "datapump_oldest_pending_age_seconds"
	MetricStageLatency        = "datapump_stage_latency_seconds"
	MetricEndToEndLatency     = "datapump_end_to_end_latency_seconds"
	MetricCISRequests         = "datapump_cis_requests_total"
	MetricCISLatency          = "datapump_cis_request_duration_seconds"
	MetricCISBreakerState     = "datapump_cis_breaker_state"
	MetricDeadLettered        = "datapump_messages_dead_lettered_total"
	MetricDuplicatesDropped   = "datapump_messages_duplicates_dropped_total"
	MetricPublisherLeader     = "datapump_publisher_leader"
	MetricReconciled          = "datapump_reconciled_items_total"
	MetricPublisherRoundError = "datapump_publisher_round_errors_total"
)

// Metrics are the pump's Prometheus metrics on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	Items               *prometheus.CounterVec
	Backlog             *prometheus.GaugeVec
	OldestPendingAge    *prometheus.GaugeVec
	StageLatency        *prometheus.HistogramVec
	EndToEndLatency     prometheus.Histogram
	CISRequests         *prometheus.CounterVec
	CISLatency          *prometheus.HistogramVec
	CISBreakerState     *prometheus.GaugeVec
	DeadLettered        *prometheus.CounterVec
	DuplicatesDropped   *prometheus.CounterVec
	PublisherLeader     prometheus.Gauge
	Reconciled          *prometheus.CounterVec
	PublisherRoundError prometheus.Counter

	own []prometheus.Collector
}

var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900}

// NewMetrics creates and registers every metric, plus the Go and process collectors.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricItems, Help: "Work items by pipeline stage and outcome.",
		}, []string{"stage", "outcome"}),
		Backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricBacklog, Help: "Items per biller and status (Pending = no control record yet; Processed records, the history, are not counted), refreshed from the shard databases.",
		}, []string{"biller", "status"}),
		OldestPendingAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricOldestPendingAge, Help: "Age of the oldest pending item per biller.",
		}, []string{"biller"}),
		StageLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricStageLatency, Help: "Time an item spent reaching a stage: queued (created → Queued), processed (created → Processed), cis (one CIS delivery).", Buckets: latencyBuckets,
		}, []string{"stage"}),
		EndToEndLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: MetricEndToEndLatency, Help: "Source row created → accepted by the CIS and marked Processed.", Buckets: latencyBuckets,
		}),
		CISRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricCISRequests, Help: "CIS deliveries by outcome (ok, transient, permanent).",
		}, []string{"outcome"}),
		CISLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricCISLatency, Help: "CIS delivery duration, in-call retries included, by outcome.", Buckets: latencyBuckets,
		}, []string{"outcome"}),
		CISBreakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricCISBreakerState, Help: "Circuit breaker per biller: 0 closed, 1 half-open, 2 open.",
		}, []string{"biller"}),
		DeadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricDeadLettered, Help: "Messages dead-lettered, by topic and reason.",
		}, []string{"topic", "reason"}),
		DuplicatesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricDuplicatesDropped, Help: "Published messages the broker dropped as duplicates (same MessageID within the window).",
		}, []string{"topic"}),
		PublisherLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricPublisherLeader, Help: "1 while this replica holds the publisher lease.",
		}),
		Reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricReconciled, Help: "Items of direct billers published by the reconcile sweep because no source announced them.",
		}, []string{"biller"}),
		PublisherRoundError: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricPublisherRoundError, Help: "Publisher rounds that ended with an error.",
		}),
	}
	m.own = []prometheus.Collector{m.Items, m.Backlog, m.OldestPendingAge, m.StageLatency, m.EndToEndLatency,
		m.CISRequests, m.CISLatency, m.CISBreakerState, m.DeadLettered, m.DuplicatesDropped,
		m.PublisherLeader, m.Reconciled, m.PublisherRoundError}
	r.MustRegister(m.own...)
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Exported lists the series names the pump exports, histograms with their
// _bucket, _sum and _count series.
func (m *Metrics) Exported() map[string]bool {
	out := map[string]bool{}
	for _, c := range m.own {
		ch := make(chan *prometheus.Desc, 4)
		go func() { c.Describe(ch); close(ch) }()
		_, isHistogram := c.(prometheus.ObserverVec)
		if _, ok := c.(prometheus.Histogram); ok {
			isHistogram = true
		}
		for d := range ch {
			match := fqName.FindStringSubmatch(d.String())
			if match == nil {
				continue
			}
			out[match[1]] = true
			if isHistogram {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					out[match[1]+suffix] = true
				}
			}
		}
	}
	return out
}

// ObserveSince records the time since start, skipping unknown starts.
func ObserveSince(h prometheus.Observer, start, now time.Time) {
	if !start.IsZero() && now.After(start) {
		h.Observe(now.Sub(start).Seconds())
	}
}
