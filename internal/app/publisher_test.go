package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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
