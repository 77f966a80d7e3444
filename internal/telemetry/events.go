package telemetry

import (
	"time"

	"github.com/datapump/datapump/internal/pump"
)

// Stages of the item pipeline, used as the "stage" label.
const (
	StageBillerConsumer = "biller_consumer"
	StageItemConsumer   = "item_consumer"
	StageRescuer        = "rescuer"
	StageReconcile      = "reconcile"
)

// PumpEvents turns the jobs' events into metrics.
type PumpEvents struct {
	M   *Metrics
	Now func() time.Time
}

var _ pump.Events = PumpEvents{}

// ItemsQueued counts queued items and their created → Queued latency.
func (e PumpEvents) ItemsQueued(_ string, createdAt []time.Time) {
	e.M.Items.WithLabelValues(StageBillerConsumer, "queued").Add(float64(len(createdAt)))
	now := e.Now()
	h := e.M.StageLatency.WithLabelValues("queued")
	for _, t := range createdAt {
		ObserveSince(h, t, now)
	}
}

// ItemFinished counts an item outcome; a delivery also records latency.
func (e PumpEvents) ItemFinished(o pump.ItemOutcome) {
	e.M.Items.WithLabelValues(StageItemConsumer, o.Outcome).Inc()
	if o.Outcome == pump.OutcomeDelivered {
		ObserveSince(e.M.StageLatency.WithLabelValues("processed"), o.SourceCreatedAt, o.At)
		ObserveSince(e.M.EndToEndLatency, o.SourceCreatedAt, o.At)
	}
}

// CISCall counts one CIS delivery and its duration.
func (e PumpEvents) CISCall(_ string, outcome string, d time.Duration) {
	e.M.CISRequests.WithLabelValues(outcome).Inc()
	e.M.CISLatency.WithLabelValues(outcome).Observe(d.Seconds())
	e.M.StageLatency.WithLabelValues("cis").Observe(d.Seconds())
}

// ItemsRescued counts the rescuer's work.
func (e PumpEvents) ItemsRescued(republished, reclaimed int) {
	e.M.Items.WithLabelValues(StageRescuer, "republished").Add(float64(republished))
	e.M.Items.WithLabelValues(StageRescuer, "reclaimed").Add(float64(reclaimed))
}

// ItemsReconciled counts items the reconcile sweep published.
func (e PumpEvents) ItemsReconciled(billerID string, n int) {
	e.M.Reconciled.WithLabelValues(billerID).Add(float64(n))
	e.M.Items.WithLabelValues(StageReconcile, "published").Add(float64(n))
}

// MessageDeadLettered counts a dead-lettered message.
func (e PumpEvents) MessageDeadLettered(topic, reason string) {
	e.M.DeadLettered.WithLabelValues(topic, reason).Inc()
}

// DuplicatesDropped counts publishes the broker dropped.
func (e PumpEvents) DuplicatesDropped(topic string, n int) {
	if n > 0 {
		e.M.DuplicatesDropped.WithLabelValues(topic).Add(float64(n))
	}
}

// PublisherRound records leadership and failed rounds.
func (e PumpEvents) PublisherRound(leader bool, err error) {
	if leader {
		e.M.PublisherLeader.Set(1)
	} else {
		e.M.PublisherLeader.Set(0)
	}
	if err != nil {
		e.M.PublisherRoundError.Inc()
	}
}
