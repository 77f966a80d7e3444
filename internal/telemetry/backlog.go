package telemetry

import (
	"context"
	"log/slog"
	"time"

	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/service"
	"github.com/datapump/datapump/internal/store"
)

// BacklogRefresher refreshes the backlog and oldest-pending gauges from
// the shard databases every interval.
type BacklogRefresher struct {
	M      *Metrics
	Read   func(ctx context.Context) ([]pump.BillerBacklog, error)
	Every  time.Duration
	Logger *slog.Logger
	loop   service.Loop
}

// Start refreshes at once, then every interval, until Stop.
func (r *BacklogRefresher) Start(ctx context.Context) error {
	return r.loop.Start(ctx, func(ctx context.Context) error {
		t := time.NewTicker(r.Every)
		defer t.Stop()
		for {
			if err := r.Refresh(ctx); err != nil && ctx.Err() == nil && r.Logger != nil {
				r.Logger.Warn("refresh backlog metrics", "error", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
}

// Stop ends the loop.
func (r *BacklogRefresher) Stop() error { return r.loop.Stop() }

// Refresh reads the backlog once and sets the gauges.
func (r *BacklogRefresher) Refresh(ctx context.Context) error {
	billers, err := r.Read(ctx)
	if len(billers) > 0 {
		r.M.Backlog.Reset()
		r.M.OldestPendingAge.Reset()
	}
	for _, b := range billers {
		r.M.Backlog.WithLabelValues(b.BillerID, "Pending").Set(float64(b.Pending))
		for _, s := range store.Statuses {
			// A status the backlog did not count (Processed, the history,
			// unless read WithProcessed) gets no series rather than a false zero.
			if n, counted := b.ByStatus[s]; counted {
				r.M.Backlog.WithLabelValues(b.BillerID, string(s)).Set(float64(n))
			}
		}
		r.M.OldestPendingAge.WithLabelValues(b.BillerID).Set(b.OldestPendingAge.Seconds())
	}
	return err
}
