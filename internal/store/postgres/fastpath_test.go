package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/storetest"
)

// fastPathRecord opens a fresh store with one payment of biller b1,
// claimed by the biller claim (Fetched), and returns the store and the
// claim.
func fastPathRecord(t *testing.T) (*Store, store.Claimed) {
	t.Helper()
	ctx := context.Background()
	s := openFresh(t, storetest.Sources())
	require.NoError(t, s.DemoSchemaCreate(ctx))
	created := time.Now().Add(-time.Minute).UTC()
	_, err := s.DemoItemsInsert(ctx, []store.DemoItem{{ItemType: items.Payment, BillerID: "b1", AmountCents: 100, Email: "a@example.com", CreatedAt: created}})
	require.NoError(t, err)
	claimed, err := s.ControlClaimPending(ctx, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: created.Add(-time.Hour), Limit: 10, Owner: "bc"})
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	return s, claimed[0]
}

// whileTouched runs op while another transaction holds an update of the
// record of key that changes neither its status nor its version (set, as
// the rescuer's bump of updated_at or a lease extension does), and commits
// that update once op waits for it. The snapshot of op's first statement
// then shows the record as it was, and its update finds a newer version:
// the case the fast batch statements hand to their fallback.
func whileTouched(t *testing.T, s *Store, key store.ItemKey, set string, op func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	tag, err := tx.Exec(ctx, `UPDATE datapump_control SET `+set+` WHERE item_type = $1 AND item_id = $2`, key.ItemType, key.ItemID)
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected())
	var xid int64
	require.NoError(t, tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&xid))

	done := make(chan struct{})
	go func() {
		defer close(done)
		op()
	}()
	require.Eventually(t, func() bool {
		var waiting bool
		err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks
			WHERE locktype = 'transactionid' AND NOT granted AND transactionid::text::bigint = $1 % 4294967296)`, xid).Scan(&waiting)
		return err == nil && waiting
	}, 10*time.Second, 5*time.Millisecond, "the batch statement waits for the other update")
	require.NoError(t, tx.Commit(ctx))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the batch statement did not finish after the other update committed")
	}
}

// TestMarkQueuedMovesARecordTouchedMeanwhile: a Fetched record whose
// updated-at another transaction bumps while ControlMarkQueued runs is
// still moved to Queued, by the fallback that locks first.
func TestMarkQueuedMovesARecordTouchedMeanwhile(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	s, c := fastPathRecord(t)
	var (
		n   int
		err error
	)
	whileTouched(t, s, c.ItemKey, `updated_at = now()`, func() {
		n, err = s.ControlMarkQueued(ctx, []store.Fenced{{ItemKey: c.ItemKey, Version: c.Version}})
	})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	got, err := s.ControlGet(ctx, c.ItemKey)
	require.NoError(t, err)
	require.Equal(t, store.StatusQueued, got.Status)
	require.Equal(t, c.Version+1, got.Version)
}

// TestClaimBatchClaimsARecordTouchedMeanwhile: a Queued record another
// transaction touches while ControlClaimBatch runs is still claimed, by
// the one-item claim the batch hands it to.
func TestClaimBatchClaimsARecordTouchedMeanwhile(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	s, c := fastPathRecord(t)
	n, err := s.ControlMarkQueued(ctx, []store.Fenced{{ItemKey: c.ItemKey, Version: c.Version}})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	var res []store.ItemClaimResult
	whileTouched(t, s, c.ItemKey, `updated_at = now()`, func() {
		res, err = s.ControlClaimBatch(ctx, []store.ControlClaimItemParams{{Key: c.ItemKey, BillerID: "b1", Owner: "ic", Lease: time.Minute}})
	})
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.NoError(t, res[0].Err)
	require.Equal(t, store.ClaimAcquired, res[0].Outcome)
	require.Equal(t, store.StatusProcessing, res[0].Control.Status)
	require.Equal(t, "ic", res[0].Control.Owner)
}

// TestFinishBatchEndsAClaimWhoseLeaseWasExtendedMeanwhile: a lease
// extension (which keeps the version) that commits while
// ControlFinishBatch runs does not cost the holder its finish.
func TestFinishBatchEndsAClaimWhoseLeaseWasExtendedMeanwhile(t *testing.T) {
	testDSN(t)
	t.Parallel()
	ctx := context.Background()
	s, c := fastPathRecord(t)
	res, err := s.ControlClaimBatch(ctx, []store.ControlClaimItemParams{{Key: c.ItemKey, BillerID: "b1", Owner: "ic", Lease: time.Minute}})
	require.NoError(t, err)
	require.Equal(t, store.ClaimAcquired, res[0].Outcome)
	held := res[0].Control
	var ok []bool
	whileTouched(t, s, c.ItemKey, `lease_until = now() + interval '1 hour', updated_at = now()`, func() {
		ok, err = s.ControlFinishBatch(ctx, []store.ControlFinishParams{
			{Fenced: store.Fenced{ItemKey: c.ItemKey, Version: held.Version}, Status: store.StatusProcessed},
		})
	})
	require.NoError(t, err)
	require.Equal(t, []bool{true}, ok)
	got, err := s.ControlGet(ctx, c.ItemKey)
	require.NoError(t, err)
	require.Equal(t, store.StatusProcessed, got.Status)
}
