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
		require.False(t, rc.Leader, "a second replica must not publish while the first holds the lease")
		require.Equal(t, 1, ra.BillersAnnounced)
		require.Zero(t, rc.BillersAnnounced)
		// The same interval bucket: a repeat announcement is dropped by the broker.
		ra2, err := a.Round(ctx)
		require.NoError(t, err)
		require.True(t, ra2.Leader)
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
// watermark lag) is not seen by the regular rounds; a full sweep brings the
// watermark down to it and the next round announces it.
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
		require.Equal(t, 1, r.BillersAnnounced)
		h.waitStatus(first, store.StatusProcessed, 3*time.Minute)
		time.Sleep(1100 * time.Millisecond) // past the one-second watermark lag
		clock.Add(int64(time.Hour))         // the next interval bucket
		r, err = p.Round(ctx)
		require.NoError(t, err)
		require.Zero(t, r.BillersAnnounced, "nothing pending; the watermark moved past the delivered items")

		late := h.insert(bl, 1, func(_ int, it *store.DemoItem) { it.CreatedAt = time.Now().Add(-30 * time.Minute).UTC() })
		clock.Add(int64(time.Hour))
		r, err = p.Round(ctx)
		require.NoError(t, err)
		require.Zero(t, r.BillersAnnounced, "the late row is below the watermark")

		s, err := p.Sweep(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, s.Shards)
		require.Equal(t, int64(1), s.Pending, "the full sweep finds the late row")
		clock.Add(int64(time.Hour)) // the next interval bucket: a new announcement, not a duplicate
		r, err = p.Round(ctx)
		require.NoError(t, err)
		require.Equal(t, 1, r.BillersAnnounced, "and the next round announces it")
		h.waitStatus(late, store.StatusProcessed, 3*time.Minute)
		h.requireExactlyOnce(append(first, late...))
	})
}

// TestRunningPublisherSweepsOnceItLeads: a started publisher runs its first
// full sweep on its own soon after it takes the lease, beside its rounds,
// so a late row below an old watermark is delivered without waiting for
// FullSweepEvery.
func TestRunningPublisherSweepsOnceItLeads(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, func(cfg *config.Config) {
			cfg.Publisher.WatermarkLag = time.Second
			cfg.Publisher.FullSweepEvery = time.Hour
		})
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ctx := context.Background()
		st := h.app.Shards["shard1"]
		// An earlier leader's watermark: everything up to a second ago is settled.
		_, err := st.PendingCount(ctx, store.PendingCountParams{Billers: []store.BillerCutover{{BillerID: bl.ID, CutoverAt: bl.CutoverAt}}, WatermarkLag: time.Second})
		require.NoError(t, err)
		late := h.insert(bl, 2, func(_ int, it *store.DemoItem) { it.CreatedAt = time.Now().Add(-30 * time.Minute).UTC() })
		counts, err := st.PendingCount(ctx, store.PendingCountParams{Billers: []store.BillerCutover{{BillerID: bl.ID, CutoverAt: bl.CutoverAt}}})
		require.NoError(t, err)
		require.Empty(t, counts, "the late rows are below the watermark")
		h.start()
		h.waitStatus(late, store.StatusProcessed, 3*time.Minute)
		h.requireExactlyOnce(late)
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
