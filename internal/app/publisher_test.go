package app_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/app"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
)

func TestPublisherOnlyOneReplicaLeads(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		_, err := h.app.Provision(context.Background())
		require.NoError(t, err)
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		h.insert(bl, 5, nil)
		newPub := func(owner string) *pump.Publisher {
			p, err := pump.NewPublisher(h.app.Deps(nil), pump.PublisherConfig{
				Owner: owner, Interval: time.Hour, LeaseTTL: 2 * time.Hour, StuckAfter: time.Hour, RescueBatch: 10, ReconcileAfter: time.Hour,
				WatermarkLag: time.Minute, FullSweepEvery: time.Hour,
			})
			require.NoError(t, err)
			return p
		}
		a, c := newPub("replica-a"), newPub("replica-b")
		ctx := context.Background()
		ra, err := a.Round(ctx)
		require.NoError(t, err)
		rc, err := c.Round(ctx)
		require.NoError(t, err)
		require.True(t, ra.Leader)
		require.True(t, ra.FullSweep, "a replica's first round as leader is a full sweep")
		require.False(t, rc.Leader, "a second replica must not publish while the first holds the lease")
		require.Equal(t, 1, ra.BillersAnnounced)
		require.Zero(t, rc.BillersAnnounced)
		// The same interval bucket: a repeat announcement is dropped by the broker.
		ra2, err := a.Round(ctx)
		require.NoError(t, err)
		require.True(t, ra2.Leader)
		require.False(t, ra2.FullSweep, "the next full sweep is an hour away")
		require.Zero(t, ra2.BillersAnnounced)
		// Once the leader gives the lease up, the other one takes over.
		require.NoError(t, h.app.Leaser.LeaseRelease(ctx, pump.PublisherLease, "replica-a"))
		rc2, err := c.Round(ctx)
		require.NoError(t, err)
		require.True(t, rc2.Leader)
	})
}

// TestPublisherFullSweepFindsLateRows: a row that commits with a
// created-at below the watermark (a source transaction longer than the
// watermark lag) is not seen by the regular rounds, and is announced and
// delivered once the next full sweep is due.
func TestPublisherFullSweepFindsLateRows(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		first := h.insert(bl, 3, nil)
		h.start(app.JobBillerConsumer, app.JobItemConsumer)
		ctx := context.Background()
		var clock atomic.Int64
		clock.Store(time.Now().UnixNano())
		deps := h.app.Deps(nil)
		deps.Now = func() time.Time { return time.Unix(0, clock.Load()) }
		p, err := pump.NewPublisher(deps, pump.PublisherConfig{
			Owner: "sweeper", Interval: time.Hour, LeaseTTL: 2 * time.Hour, StuckAfter: time.Hour, RescueBatch: 10, ReconcileAfter: time.Hour,
			WatermarkLag: time.Second, FullSweepEvery: time.Hour,
		})
		require.NoError(t, err)
		r, err := p.Round(ctx)
		require.NoError(t, err)
		require.True(t, r.FullSweep)
		require.Equal(t, 1, r.BillersAnnounced)
		h.waitStatus(first, store.StatusProcessed, 3*time.Minute)
		time.Sleep(1100 * time.Millisecond) // past the one-second watermark lag
		clock.Add(int64(time.Minute))       // the next interval bucket
		r, err = p.Round(ctx)
		require.NoError(t, err)
		require.False(t, r.FullSweep)
		require.Zero(t, r.BillersAnnounced, "nothing pending; the watermark moved past the delivered items")

		late := h.insert(bl, 1, func(_ int, it *store.DemoItem) { it.CreatedAt = time.Now().Add(-30 * time.Minute).UTC() })
		clock.Add(int64(time.Minute))
		r, err = p.Round(ctx)
		require.NoError(t, err)
		require.False(t, r.FullSweep)
		require.Zero(t, r.BillersAnnounced, "the late row is below the watermark")

		clock.Add(int64(time.Hour))
		r, err = p.Round(ctx)
		require.NoError(t, err)
		require.True(t, r.FullSweep, "an hour after the last full sweep")
		require.Equal(t, 1, r.BillersAnnounced, "the full sweep finds the late row")
		h.waitStatus(late, store.StatusProcessed, 3*time.Minute)
		h.requireExactlyOnce(append(first, late...))
	})
}

func TestRescuerRepublishesStuckItems(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, func(cfg *config.Config) { cfg.Publisher.StuckAfter = time.Second })
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ws := h.insert(bl, 30, nil)
		ctx := context.Background()
		// A biller consumer that claimed and crashed before publishing:
		// the items sit in Fetched and no message exists for them.
		claimed, err := h.app.Shards["shard1"].ControlClaimPending(ctx, store.ControlClaimPendingParams{
			BillerID: bl.ID, CutoverAt: bl.CutoverAt, Limit: 30, Owner: "crashed",
		})
		require.NoError(t, err)
		require.Len(t, claimed, 30)
		h.start()
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)
		h.requireExactlyOnce(ws)
	})
}
