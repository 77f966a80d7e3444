// Package storetest is the conformance suite of the store port. Every
// adapter's test calls Exercise with a constructor of fresh, empty, migrated
// databases; the suite creates the demo source schema, fills it through the
// adapter's DemoSource and checks the behaviour the pump relies on: claims
// that never hand one item to two workers, conditional transitions, fencing
// by version, the cut-over watermark, out-of-order commits, the rescuer's
// queries and the leader lease.
//
// Time in the suite comes from the database clock (Store.Now). Leases and
// deadlines are given tiny durations and waited out with short sleeps; no
// test asserts on elapsed wall time.
//
// Where the port leaves a choice open, the suite pins it down, so every
// adapter behaves alike:
//   - A record's version is positive and grows on every transition (claim,
//     Queued, Processing, finish, release, skip, reclaim); ControlExtendLease
//     and ControlListStuck are not transitions and keep it.
//   - ControlListStuck returns the records as they are after its bump of
//     updated-at: each equals what ControlGet reads after the call.
//   - ControlClaimPending takes items by source created-at, then item type,
//     then id, returns them in that order, records Owner and origin "poll",
//     and copies the source created-at; a zero CutoverAt means no cut-over,
//     and an item created exactly at the cut-over is pending.
//   - PendingCount may leave out billers with nothing pending; each row's
//     OldestCreatedAt is exactly the oldest pending source created-at.
//   - PendingList orders like ControlClaimPending (created-at, item type,
//     id); OlderThan is inclusive (created-at <= database now - OlderThan),
//     so a zero OlderThan lists items created just now; a zero Limit means
//     the adapter's default (at least 5); no billers lists nothing.
//   - ControlRetry returns records oldest failed-at first, then item type,
//     then id, and Limit takes the oldest; a zero Limit means no limit.
//     Filters combine with AND; a non-nil empty Keys does not filter. The
//     moved record is Queued at version+1 with attempts 0, no owner, no
//     lease, NextAttemptAt zero or the database's now, QueuedAt and
//     UpdatedAt now, LastError kept; the result equals ControlGet after the
//     move. DryRun returns the records exactly as ControlGet reads them
//     (still Failed) and changes nothing. Concurrent calls move a record once.
//   - ControlClaimItem: a New record is ClaimAbsent; a takeover of an
//     expired lease is ClaimAcquired with a new version; ClaimBusy's RetryAt
//     is the lease end, ClaimNotYet's the NextAttemptAt; an inserted record
//     takes its biller and created-at from the source row.
//   - ControlClaimItem and ControlClaimBatch clear NextAttemptAt.
//   - ControlFinish and ControlFinishBatch keep the owner; they replace
//     LastError only with a non-empty Error; a Processed finish leaves
//     FailedAt zero and a Failed one ProcessedAt. A finish to a status
//     other than Processed or Failed is an error.
//   - ControlMarkQueued, ControlRelease and ControlReclaimExpired clear the
//     owner; a zero RetryIn is due at once. ControlReclaimExpired's
//     LastError is "lease of <owner> expired", naming the owner whose lease
//     it was. ControlSkip of an item without a record is false.
//   - ControlCountByStatus returns one row per biller and status that has
//     records, ordered by biller and then by the status's place in
//     store.Statuses; without WithProcessed it counts every status but
//     Processed, with it every record.
//   - ControlList orders newest first: by created-at, then item type, then
//     id, all descending, and a Limit takes the newest.
//   - A zero Limit of ControlList, ControlListStuck and
//     ControlReclaimExpired means the adapter's default (at least 5).
//   - ItemEnrich and ItemSource of an unknown item type wrap
//     store.ErrUnknownItemType; ItemEnrich of a missing source row wraps
//     store.ErrRelatedMissing.
//   - DemoItemsInsert creates a non-zero AccountID that does not exist yet,
//     and assigns ids that grow in insert order.
package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// Harness is what an adapter's test gives the suite: a fresh, empty,
// migrated database per call. The adapter registers its own cleanup with
// t.Cleanup.
type Harness struct {
	Store  store.Store
	Demo   store.DemoSource
	Leaser store.Leaser

	// BeginSourceInsert inserts demo items (as DemoItemsInsert does) in a
	// transaction it leaves open, and returns their keys and a function that
	// commits it. The suite uses it to show that a row committed after
	// higher ids were claimed is still found. Required when
	// Features.ConcurrentWriters is set; ignored otherwise.
	BeginSourceInsert func(ctx context.Context, items []store.DemoItem) (keys []store.ItemKey, commit func(context.Context) error, err error)

	// ControlInsertNew writes a control record in status New for an existing
	// source row (no port method creates one; operators and future tools
	// may). The suite uses it to check that New counts as pending and is
	// claimed. When nil, the tests that need it are skipped and say so.
	ControlInsertNew func(ctx context.Context, key store.ItemKey, billerID string) error
}

// Features declares what the adapter's database can do.
type Features struct {
	// ConcurrentWriters: the database lets two write transactions be open
	// at once (Postgres yes, SQLite no).
	ConcurrentWriters bool
}

// Sources returns the item type mappings the suite runs with: the built-in
// payment and paperless types on the demo schema.
func Sources() []store.Source {
	var out []store.Source
	for _, t := range items.Builtin() {
		out = append(out, t.Source)
	}
	return out
}

// Exercise runs every test of the suite as parallel subtests. newHarness is
// called once per subtest, with that subtest's t and the suite's sources.
func Exercise(ctx context.Context, t *testing.T, f Features, newHarness func(t *testing.T, sources []store.Source) Harness) {
	t.Helper()
	tests := []struct {
		name string
		run  func(e *env)
	}{
		{"Migrate/Idempotent", testMigrateIdempotent},
		{"Now/DatabaseClock", testNow},
		{"PendingCount/PerBiller", testPendingCountPerBiller},
		{"PendingCount/ExcludesControlled", testPendingCountExcludesControlled},
		{"PendingCount/IncludesNew", testPendingCountIncludesNew},
		{"PendingCount/Cutover", testPendingCountCutover},
		{"PendingCount/Oldest", testPendingCountOldest},
		{"PendingCount/Watermark/SkipsHistory", testWatermarkSkipsHistory},
		{"PendingCount/Watermark/StopsAtPending", testWatermarkStopsAtPending},
		{"PendingCount/Watermark/PerItemType", testWatermarkPerItemType},
		{"PendingCount/Watermark/Cutover", testWatermarkCutover},
		{"PendingCount/Watermark/NoLag", testWatermarkNoLag},
		{"PendingList", testPendingList},
		{"PendingList/ExcludesControlled", testPendingListExcludesControlled},
		{"PendingList/IncludesNew", testPendingListIncludesNew},
		{"ClaimPending/FetchedRecords", testClaimPendingRecords},
		{"ClaimPending/OrderAndLimit", testClaimPendingOrder},
		{"ClaimPending/Cutover", testClaimPendingCutover},
		{"ClaimPending/New", testClaimPendingNew},
		{"ClaimPending/From", testClaimPendingFrom},
		{"ClaimPending/Concurrent", testClaimPendingConcurrent},
		{"ClaimPending/OutOfOrderID", testOutOfOrderID},
		{"ClaimPending/OutOfOrderOpenTransaction", func(e *env) { testOutOfOrderOpenTx(e, f) }},
		{"MarkQueued/Conditional", testMarkQueuedConditional},
		{"ClaimItem/FromQueued", testClaimItemFromQueued},
		{"ClaimItem/FromFetched", testClaimItemFromFetched},
		{"ClaimItem/Busy", testClaimItemBusy},
		{"ClaimItem/Done", testClaimItemDone},
		{"ClaimItem/Absent", testClaimItemAbsent},
		{"ClaimItem/New", testClaimItemNew},
		{"ClaimItem/InsertIfAbsent", testClaimItemInsertIfAbsent},
		{"ClaimItem/InsertIfAbsentMissingSource", testClaimItemInsertMissingSource},
		{"ClaimItem/Concurrent", testClaimItemConcurrent},
		{"ClaimItem/ConcurrentInsert", testClaimItemConcurrentInsert},
		{"ClaimBatch/Outcomes", testClaimBatchOutcomes},
		{"ClaimBatch/Concurrent", testClaimBatchConcurrent},
		{"FinishBatch", testFinishBatch},
		{"Batch/PipelineConcurrent", testBatchPipelineConcurrent},
		{"ItemEnrichBatch", testItemEnrichBatch},
		{"Fencing/LeaseTakeover", testFencingTakeover},
		{"Fencing/StaleVersions", testStaleVersions},
		{"ExtendLease", testExtendLease},
		{"Finish/ProcessedAndFailed", testFinish},
		{"Release/RetryLater", testRelease},
		{"Skip", testSkip},
		{"ListStuck/OnlyOverdue", testListStuck},
		{"ListStuck/BumpsUpdatedAt", testListStuckBumps},
		{"ReclaimExpired", testReclaimExpired},
		{"ControlGetListCount", testControlGetListCount},
		{"ControlCountByStatus", testControlCountByStatus},
		{"Retry/Record", testRetryRecord},
		{"Retry/Filters", testRetryFilters},
		{"Retry/DryRun", testRetryDryRun},
		{"Retry/OnlyFailed", testRetryOnlyFailed},
		{"Retry/Concurrent", testRetryConcurrent},
		{"ItemEnrich", testItemEnrich},
		{"ItemEnrich/RelatedMissing", testItemEnrichMissing},
		{"ItemSource", testItemSource},
		{"DemoItemsInsert/Many", testDemoInsertMany},
		{"Leaser", testLeaser},
		{"Leaser/Expiry", testLeaserExpiry},
		{"Random/StateMachine", testRandomStateMachine},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, Sources())
			require.NotNil(t, h.Store, "harness: Store")
			require.NotNil(t, h.Demo, "harness: Demo")
			require.NotNil(t, h.Leaser, "harness: Leaser")
			e := &env{t: t, ctx: ctx, h: h, s: h.Store}
			require.NoError(t, h.Demo.DemoSchemaCreate(ctx), "create demo schema")
			tc.run(e)
		})
	}
}

// env is one subtest's database and helpers around it.
type env struct {
	t   *testing.T
	ctx context.Context
	h   Harness
	s   store.Store
}

// now reads the database clock, truncated to milliseconds (the coarsest
// precision an adapter keeps).
func (e *env) now() time.Time {
	e.t.Helper()
	n, err := e.s.Now(e.ctx)
	require.NoError(e.t, err, "now")
	require.False(e.t, n.IsZero(), "now is zero")
	return n.UTC().Truncate(time.Millisecond)
}

func (e *env) insert(rows ...store.DemoItem) []store.ItemKey {
	e.t.Helper()
	keys, err := e.h.Demo.DemoItemsInsert(e.ctx, rows)
	require.NoError(e.t, err, "insert demo items")
	require.Len(e.t, keys, len(rows))
	return keys
}

// payments inserts n payments of biller created at createdAt (zero: the
// database clock).
func (e *env) payments(biller string, n int, createdAt time.Time) []store.ItemKey {
	e.t.Helper()
	rows := make([]store.DemoItem, n)
	for i := range rows {
		rows[i] = store.DemoItem{ItemType: items.Payment, BillerID: biller, AmountCents: int64(100 + i), CreatedAt: createdAt}
	}
	return e.insert(rows...)
}

func (e *env) claimPending(biller string, cutover time.Time, limit int, owner string) []store.Claimed {
	e.t.Helper()
	got, err := e.s.ControlClaimPending(e.ctx, store.ControlClaimPendingParams{BillerID: biller, CutoverAt: cutover, Limit: limit, Owner: owner})
	require.NoError(e.t, err, "claim pending")
	return got
}

// queued claims every pending item of biller and marks it Queued.
func (e *env) queued(biller string) []store.Claimed {
	e.t.Helper()
	claimed := e.claimPending(biller, time.Time{}, 1000, "biller-consumer")
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(claimed))
	require.NoError(e.t, err, "mark queued")
	require.Equal(e.t, len(claimed), n, "mark queued")
	return claimed
}

func (e *env) claimItem(key store.ItemKey, owner string, lease time.Duration) store.ItemClaim {
	e.t.Helper()
	c, err := e.s.ControlClaimItem(e.ctx, store.ControlClaimItemParams{Key: key, Owner: owner, Lease: lease})
	require.NoError(e.t, err, "claim item %s", key)
	return c
}

// processing claims key for owner and requires it to be acquired.
func (e *env) processing(key store.ItemKey, owner string, lease time.Duration) store.Control {
	e.t.Helper()
	c := e.claimItem(key, owner, lease)
	require.Equal(e.t, store.ClaimAcquired, c.Outcome, "claim %s", key)
	require.Equal(e.t, store.StatusProcessing, c.Control.Status)
	return c.Control
}

func (e *env) get(key store.ItemKey) store.Control {
	e.t.Helper()
	c, err := e.s.ControlGet(e.ctx, key)
	require.NoError(e.t, err, "control get %s", key)
	return c
}

func (e *env) pending(billers ...store.BillerCutover) map[string]int64 {
	e.t.Helper()
	rows, err := e.s.PendingCount(e.ctx, store.PendingCountParams{Billers: billers})
	require.NoError(e.t, err, "pending count")
	out := map[string]int64{}
	for _, r := range rows {
		_, dup := out[r.BillerID]
		require.False(e.t, dup, "biller %s counted twice", r.BillerID)
		if r.Pending != 0 {
			out[r.BillerID] = r.Pending
		}
	}
	return out
}

func (e *env) requireInsertNew() {
	e.t.Helper()
	if e.h.ControlInsertNew == nil {
		e.t.Skip("harness has no ControlInsertNew: cannot create a New control record")
	}
}

func fenced(cs []store.Claimed) []store.Fenced {
	out := make([]store.Fenced, len(cs))
	for i, c := range cs {
		out[i] = store.Fenced{ItemKey: c.ItemKey, Version: c.Version}
	}
	return out
}

func keysOf(cs []store.Claimed) []store.ItemKey {
	out := make([]store.ItemKey, len(cs))
	for i, c := range cs {
		out[i] = c.ItemKey
	}
	return out
}

func controlKeys(cs []store.Control) []store.ItemKey {
	out := make([]store.ItemKey, len(cs))
	for i, c := range cs {
		out[i] = c.ItemKey
	}
	return out
}

func bc(biller string) store.BillerCutover { return store.BillerCutover{BillerID: biller} }

func testMigrateIdempotent(e *env) {
	keys := e.payments("b1", 2, time.Time{})
	claimed := e.claimPending("b1", time.Time{}, 10, "w")
	require.Len(e.t, claimed, 2)
	require.NoError(e.t, e.s.Migrate(e.ctx), "migrate again")
	require.NoError(e.t, e.s.Migrate(e.ctx), "migrate a third time")
	require.NoError(e.t, e.s.Ping(e.ctx), "ping")
	require.NoError(e.t, e.h.Demo.DemoSchemaCreate(e.ctx), "demo schema again")
	for _, k := range keys {
		require.Equal(e.t, store.StatusFetched, e.get(k).Status, "records survive migrate")
	}
	require.Equal(e.t, map[string]int64{}, e.pending(bc("b1")))
}

func testNow(e *env) {
	a := e.now()
	b := e.now()
	require.False(e.t, b.Before(a), "database clock went backwards: %s then %s", a, b)
	require.WithinDuration(e.t, a, b, time.Hour)
}
