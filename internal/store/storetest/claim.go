package storetest

import (
	"fmt"
	"sync"
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// Durations the suite uses: expire is a lease or delay short enough to be
// over after pause; hour is one that cannot end during a test.
const (
	expire = time.Millisecond
	pause  = 30 * time.Millisecond
	hour   = time.Hour
)

func testClaimItemFromQueued(e *env) {
	e.payments("b1", 1, time.Time{})
	q := e.queued("b1")[0]
	before := e.get(q.ItemKey)
	t0 := e.now()
	c := e.claimItem(q.ItemKey, "w1", hour)
	t1 := e.now()
	require.Equal(e.t, store.ClaimAcquired, c.Outcome)
	require.Equal(e.t, q.ItemKey, c.Control.ItemKey)
	require.Equal(e.t, store.StatusProcessing, c.Control.Status)
	require.Equal(e.t, "w1", c.Control.Owner)
	require.Equal(e.t, "b1", c.Control.BillerID)
	require.Greater(e.t, c.Control.Version, before.Version)
	requireBetween(e, t0.Add(hour), t1.Add(hour), c.Control.LeaseUntil, "lease-until")
	requireBetween(e, t0, t1, c.Control.ProcessingAt, "processing-at")

	r := e.get(q.ItemKey)
	require.Equal(e.t, store.StatusProcessing, r.Status)
	require.Equal(e.t, c.Control.Version, r.Version)
	require.Equal(e.t, "w1", r.Owner)
	require.True(e.t, r.LeaseUntil.Equal(c.Control.LeaseUntil))
	require.Zero(e.t, r.Attempts)
}

// testClaimItemFromFetched: the item message can arrive before the biller
// consumer's Fetched → Queued update; the claim wins and the late update
// changes nothing.
func testClaimItemFromFetched(e *env) {
	e.payments("b1", 1, time.Time{})
	f := e.claimPending("b1", time.Time{}, 1, "bc")[0]
	p := e.processing(f.ItemKey, "w1", hour)
	require.Greater(e.t, p.Version, f.Version)
	n, err := e.s.ControlMarkQueued(e.ctx, fenced([]store.Claimed{f}))
	require.NoError(e.t, err)
	require.Zero(e.t, n, "the late Queued update is a no-op")
	r := e.get(f.ItemKey)
	require.Equal(e.t, store.StatusProcessing, r.Status)
	require.Equal(e.t, p.Version, r.Version)
}

func testClaimItemBusy(e *env) {
	e.payments("b1", 1, time.Time{})
	q := e.queued("b1")[0]
	p := e.processing(q.ItemKey, "w1", hour)
	c := e.claimItem(q.ItemKey, "w2", hour)
	require.Equal(e.t, store.ClaimBusy, c.Outcome)
	require.Equal(e.t, "w1", c.Control.Owner)
	require.Equal(e.t, p.Version, c.Control.Version)
	require.True(e.t, c.RetryAt.Equal(p.LeaseUntil), "busy until the lease ends: %s vs %s", c.RetryAt, p.LeaseUntil)
	r := e.get(q.ItemKey)
	require.Equal(e.t, "w1", r.Owner)
	require.Equal(e.t, p.Version, r.Version)
}

func testClaimItemDone(e *env) {
	e.payments("b1", 3, time.Time{})
	q := e.queued("b1")
	for i, st := range []store.Status{store.StatusProcessed, store.StatusFailed} {
		p := e.processing(q[i].ItemKey, "w", hour)
		ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Status: st, Error: "x"})
		require.NoError(e.t, err)
		require.True(e.t, ok)
	}
	ok, err := e.s.ControlSkip(e.ctx, q[2].ItemKey, "off")
	require.NoError(e.t, err)
	require.True(e.t, ok)
	for _, x := range q {
		before := e.get(x.ItemKey)
		c, err := e.s.ControlClaimItem(e.ctx, store.ControlClaimItemParams{Key: x.ItemKey, Owner: "w2", Lease: hour, InsertIfAbsent: true, Origin: "direct"})
		require.NoError(e.t, err)
		require.Equal(e.t, store.ClaimDone, c.Outcome, "%s in %s", x.ItemKey, before.Status)
		require.Equal(e.t, before.Status, c.Control.Status)
		require.Equal(e.t, before, e.get(x.ItemKey), "nothing changed")
	}
}

func testClaimItemAbsent(e *env) {
	k := e.payments("b1", 1, time.Time{})[0]
	c := e.claimItem(k, "w", hour)
	require.Equal(e.t, store.ClaimAbsent, c.Outcome, "no record and no insert")
	_, err := e.s.ControlGet(e.ctx, k)
	require.ErrorIs(e.t, err, store.ErrNotFound, "nothing was inserted")
	c = e.claimItem(store.ItemKey{ItemType: items.Payment, ItemID: 987654}, "w", hour)
	require.Equal(e.t, store.ClaimAbsent, c.Outcome, "no source row either")
}

func testClaimItemNew(e *env) {
	e.requireInsertNew()
	k := e.payments("b1", 1, time.Time{})[0]
	require.NoError(e.t, e.h.ControlInsertNew(e.ctx, k, "b1"))
	before := e.get(k)
	c := e.claimItem(k, "w", hour)
	require.Equal(e.t, store.ClaimAbsent, c.Outcome, "a New record is not yet fetched")
	require.Equal(e.t, before, e.get(k))
}

func testClaimItemInsertIfAbsent(e *env) {
	created := e.now().Add(-hour)
	k := e.insert(store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "d@example.com", CreatedAt: created})[0]
	t0 := e.now()
	c, err := e.s.ControlClaimItem(e.ctx, store.ControlClaimItemParams{Key: k, BillerID: "b1", Owner: "w", Lease: hour, InsertIfAbsent: true, Origin: "direct"})
	require.NoError(e.t, err)
	t1 := e.now()
	require.Equal(e.t, store.ClaimAcquired, c.Outcome)
	r := e.get(k)
	require.Equal(e.t, c.Control.Version, r.Version)
	require.Positive(e.t, r.Version)
	require.Equal(e.t, store.StatusProcessing, r.Status)
	require.Equal(e.t, "direct", r.Origin)
	require.Equal(e.t, "b1", r.BillerID)
	require.Equal(e.t, "w", r.Owner)
	require.Zero(e.t, r.Attempts)
	require.True(e.t, r.SourceCreatedAt.Equal(created), "source created-at %s", r.SourceCreatedAt)
	requireBetween(e, t0.Add(hour), t1.Add(hour), r.LeaseUntil, "lease-until")
	require.Equal(e.t, map[string]int64{}, e.pending(bc("b1")), "an item with a record is not pending")
	require.Empty(e.t, e.claimPending("b1", time.Time{}, 10, "bc"))

	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: k, Version: r.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
}

func testClaimItemInsertMissingSource(e *env) {
	e.payments("b1", 1, time.Time{})
	missing := store.ItemKey{ItemType: items.Payment, ItemID: 987654}
	_, err := e.s.ControlClaimItem(e.ctx, store.ControlClaimItemParams{Key: missing, BillerID: "b1", Owner: "w", Lease: hour, InsertIfAbsent: true, Origin: "direct"})
	require.ErrorIs(e.t, err, store.ErrNotFound)
	_, err = e.s.ControlGet(e.ctx, missing)
	require.ErrorIs(e.t, err, store.ErrNotFound, "no record for a missing source row")

	_, err = e.s.ControlClaimItem(e.ctx, store.ControlClaimItemParams{Key: store.ItemKey{ItemType: "invoice", ItemID: 1}, BillerID: "b1", Owner: "w", Lease: hour, InsertIfAbsent: true, Origin: "direct"})
	require.ErrorIs(e.t, err, store.ErrUnknownItemType)
}

// testClaimItemConcurrent: eight workers receive the same item message at
// once; exactly one holds the item.
func testClaimItemConcurrent(e *env) {
	e.payments("b1", 4, time.Time{})
	for _, q := range e.queued("b1") {
		outcomes := claimConcurrently(e, store.ControlClaimItemParams{Key: q.ItemKey, Lease: hour})
		require.Equal(e.t, 1, outcomes[store.ClaimAcquired], "%s: %v", q.ItemKey, outcomes)
		require.Equal(e.t, 7, outcomes[store.ClaimBusy], "%s: %v", q.ItemKey, outcomes)
	}
}

// testClaimItemConcurrentInsert: the same for a directly published item
// with no record yet: one insert wins.
func testClaimItemConcurrentInsert(e *env) {
	keys := e.payments("b1", 3, time.Time{})
	for _, k := range keys {
		outcomes := claimConcurrently(e, store.ControlClaimItemParams{Key: k, BillerID: "b1", Lease: hour, InsertIfAbsent: true, Origin: "direct"})
		require.Equal(e.t, 1, outcomes[store.ClaimAcquired], "%s: %v", k, outcomes)
		require.Equal(e.t, 7, outcomes[store.ClaimBusy], "%s: %v", k, outcomes)
	}
}

func claimConcurrently(e *env, p store.ControlClaimItemParams) map[store.ClaimOutcome]int {
	e.t.Helper()
	const workers = 8
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		outcomes = map[store.ClaimOutcome]int{}
		owners   []string
		errs     = make(chan error, workers)
		start    = make(chan struct{})
	)
	for w := 0; w < workers; w++ {
		p := p
		p.Owner = fmt.Sprintf("worker-%d", w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := e.s.ControlClaimItem(e.ctx, p)
			if err != nil {
				errs <- fmt.Errorf("%s: %w", p.Owner, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			outcomes[c.Outcome]++
			if c.Outcome == store.ClaimAcquired {
				owners = append(owners, p.Owner)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(e.t, err)
	}
	if len(owners) == 1 {
		require.Equal(e.t, owners[0], e.get(p.Key).Owner, "the record names the winner")
	}
	return outcomes
}

// testFencingTakeover: A's lease expires, B takes the item over; A's late
// finish changes nothing and B's claim stands.
func testFencingTakeover(e *env) {
	e.payments("b1", 1, time.Time{})
	q := e.queued("b1")[0]
	a := e.processing(q.ItemKey, "A", expire)
	time.Sleep(pause)
	bc := e.claimItem(q.ItemKey, "B", hour)
	require.Equal(e.t, store.ClaimAcquired, bc.Outcome, "an expired lease is taken over")
	b := bc.Control
	require.Greater(e.t, b.Version, a.Version, "the takeover is a new version")
	require.Equal(e.t, "B", b.Owner)

	aFenced := store.Fenced{ItemKey: q.ItemKey, Version: a.Version}
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: aFenced, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.False(e.t, ok, "A no longer holds the item")
	ok, err = e.s.ControlExtendLease(e.ctx, aFenced, hour)
	require.NoError(e.t, err)
	require.False(e.t, ok)
	ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: aFenced, Error: "late", RetryIn: time.Second})
	require.NoError(e.t, err)
	require.False(e.t, ok)

	r := e.get(q.ItemKey)
	require.Equal(e.t, store.StatusProcessing, r.Status, "B's state stands")
	require.Equal(e.t, "B", r.Owner)
	require.Equal(e.t, b.Version, r.Version)
	require.True(e.t, r.LeaseUntil.Equal(b.LeaseUntil))

	ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: q.ItemKey, Version: b.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	require.Equal(e.t, store.StatusProcessed, e.get(q.ItemKey).Status)
}

// testStaleVersions: every update of a Processing record that names another
// version, or a record not in Processing, is a no-op.
func testStaleVersions(e *env) {
	e.payments("b1", 2, time.Time{})
	q := e.queued("b1")
	p := e.processing(q[0].ItemKey, "w", hour)
	before := e.get(p.ItemKey)
	for _, v := range []int64{p.Version - 1, p.Version + 1} {
		f := store.Fenced{ItemKey: p.ItemKey, Version: v}
		ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: f, Status: store.StatusProcessed})
		require.NoError(e.t, err)
		require.False(e.t, ok, "finish at version %d", v)
		ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: f, Status: store.StatusFailed, Error: "x"})
		require.NoError(e.t, err)
		require.False(e.t, ok, "fail at version %d", v)
		ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: f, Error: "x", RetryIn: time.Second})
		require.NoError(e.t, err)
		require.False(e.t, ok, "release at version %d", v)
		ok, err = e.s.ControlExtendLease(e.ctx, f, 2*hour)
		require.NoError(e.t, err)
		require.False(e.t, ok, "extend at version %d", v)
		require.Equal(e.t, before, e.get(p.ItemKey), "nothing changed")
	}

	// A Queued record at its own version is not held by anyone.
	qr := e.get(q[1].ItemKey)
	f := store.Fenced{ItemKey: qr.ItemKey, Version: qr.Version}
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: f, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.False(e.t, ok, "finish of a Queued record")
	ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: f, RetryIn: time.Second})
	require.NoError(e.t, err)
	require.False(e.t, ok, "release of a Queued record")
	ok, err = e.s.ControlExtendLease(e.ctx, f, hour)
	require.NoError(e.t, err)
	require.False(e.t, ok, "extend of a Queued record")
	require.Equal(e.t, qr, e.get(qr.ItemKey))

	// Nor is a record that does not exist.
	ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: store.ItemKey{ItemType: items.Payment, ItemID: 987654}, Version: 1}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.False(e.t, ok)

	// Finish only ends in Processed or Failed.
	_, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Status: store.StatusQueued})
	require.Error(e.t, err, "finish to Queued")
	require.Equal(e.t, before, e.get(p.ItemKey))
}

func testExtendLease(e *env) {
	e.payments("b1", 1, time.Time{})
	q := e.queued("b1")[0]
	p := e.processing(q.ItemKey, "w", expire)
	t0 := e.now()
	ok, err := e.s.ControlExtendLease(e.ctx, store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, hour)
	require.NoError(e.t, err)
	require.True(e.t, ok)
	t1 := e.now()
	r := e.get(p.ItemKey)
	require.Equal(e.t, p.Version, r.Version, "extending is not a transition: the holder keeps its version")
	require.Equal(e.t, store.StatusProcessing, r.Status)
	requireBetween(e, t0.Add(hour), t1.Add(hour), r.LeaseUntil, "lease-until")

	time.Sleep(pause)
	require.Equal(e.t, store.ClaimBusy, e.claimItem(p.ItemKey, "other", hour).Outcome, "the extended lease holds")
	got, err := e.s.ControlReclaimExpired(e.ctx, store.ControlReclaimExpiredParams{Limit: 10})
	require.NoError(e.t, err)
	require.Empty(e.t, got)
	ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
}

func testFinish(e *env) {
	e.payments("b1", 5, time.Time{})
	q := e.queued("b1")

	p := e.processing(q[0].ItemKey, "w", hour)
	t0 := e.now()
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	t1 := e.now()
	r := e.get(p.ItemKey)
	require.Equal(e.t, store.StatusProcessed, r.Status)
	require.Greater(e.t, r.Version, p.Version)
	requireBetween(e, t0, t1, r.ProcessedAt, "processed-at")
	requireBetween(e, t0, t1, r.UpdatedAt, "updated-at")
	require.True(e.t, r.FailedAt.IsZero())
	require.True(e.t, r.LeaseUntil.IsZero(), "no lease once finished")
	require.Equal(e.t, "w", r.Owner, "the owner names the worker that finished it")
	require.Empty(e.t, r.LastError)

	ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.False(e.t, ok, "a second finish is a no-op")
	require.Equal(e.t, r, e.get(p.ItemKey))

	p = e.processing(q[1].ItemKey, "w", hour)
	ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Status: store.StatusFailed, Error: "400 bad request: account closed"})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	r = e.get(p.ItemKey)
	require.Equal(e.t, store.StatusFailed, r.Status)
	require.Equal(e.t, "400 bad request: account closed", r.LastError)
	require.False(e.t, r.FailedAt.IsZero(), "failed-at")
	require.True(e.t, r.ProcessedAt.IsZero())
	require.Equal(e.t, "w", r.Owner)

	// Retried and then delivered: the error of the failed attempt stays,
	// the failure time goes.
	retried, err := e.s.ControlRetry(e.ctx, store.ControlRetryParams{Keys: []store.ItemKey{p.ItemKey}})
	require.NoError(e.t, err)
	require.Len(e.t, retried, 1)
	p = e.processing(p.ItemKey, "w2", hour)
	e.finish(p, store.StatusProcessed)
	r = e.get(p.ItemKey)
	require.Equal(e.t, store.StatusProcessed, r.Status)
	require.Equal(e.t, "400 bad request: account closed", r.LastError, "a finish without an error keeps the last one")
	require.True(e.t, r.FailedAt.IsZero(), "a Processed finish clears failed-at")
	require.False(e.t, r.ProcessedAt.IsZero())
	require.Equal(e.t, "w2", r.Owner)

	// A finish without an error keeps the last one and one with an error
	// replaces it, whichever the status; the owner stays.
	for i, tc := range []struct {
		status      store.Status
		err, result string
	}{
		{store.StatusProcessed, "", "503 unavailable"},
		{store.StatusFailed, "", "503 unavailable"},
		{store.StatusFailed, "422 unprocessable", "422 unprocessable"},
	} {
		k := q[2+i].ItemKey
		p = e.processing(k, "w", hour)
		ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: k, Version: p.Version}, Error: "503 unavailable"})
		require.NoError(e.t, err)
		require.True(e.t, ok)
		p = e.processing(k, "w3", hour)
		ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: k, Version: p.Version}, Status: tc.status, Error: tc.err})
		require.NoError(e.t, err)
		require.True(e.t, ok)
		r = e.get(k)
		require.Equal(e.t, tc.status, r.Status)
		require.Equal(e.t, tc.result, r.LastError, "%s with error %q", tc.status, tc.err)
		require.Equal(e.t, "w3", r.Owner, "%s keeps the owner", tc.status)
	}
}

func testRelease(e *env) {
	e.payments("b1", 2, time.Time{})
	q := e.queued("b1")

	p := e.processing(q[0].ItemKey, "w", hour)
	t0 := e.now()
	ok, err := e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Error: "503 unavailable", RetryIn: hour})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	t1 := e.now()
	r := e.get(p.ItemKey)
	require.Equal(e.t, store.StatusQueued, r.Status)
	require.Equal(e.t, 1, r.Attempts)
	require.Equal(e.t, "503 unavailable", r.LastError)
	require.Greater(e.t, r.Version, p.Version)
	require.Empty(e.t, r.Owner, "the owner is cleared")
	requireBetween(e, t0.Add(hour), t1.Add(hour), r.NextAttemptAt, "next-attempt-at")

	c := e.claimItem(p.ItemKey, "w2", hour)
	require.Equal(e.t, store.ClaimNotYet, c.Outcome, "claimed before its retry time")
	require.True(e.t, c.RetryAt.Equal(r.NextAttemptAt), "retry at %s, want %s", c.RetryAt, r.NextAttemptAt)
	require.Equal(e.t, r, e.get(p.ItemKey), "nothing changed")

	ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Error: "again", RetryIn: time.Millisecond})
	require.NoError(e.t, err)
	require.False(e.t, ok, "a second release is a no-op")

	p = e.processing(q[1].ItemKey, "w", hour)
	ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: p.ItemKey, Version: p.Version}, Error: "timeout", RetryIn: expire})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	time.Sleep(pause)
	p2 := e.processing(q[1].ItemKey, "w2", hour)
	require.Equal(e.t, 1, p2.Attempts, "attempts survive the next claim")
	require.Equal(e.t, "timeout", p2.LastError, "the last error is kept")
	require.True(e.t, p2.NextAttemptAt.IsZero(), "the claim clears the retry time it waited for: %s", p2.NextAttemptAt)
	require.Equal(e.t, p2, e.get(p2.ItemKey), "the claim returns the record as stored")
	ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: p2.ItemKey, Version: p2.Version}, Error: "timeout again"})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	r = e.get(p2.ItemKey)
	require.Equal(e.t, 2, r.Attempts)
	require.Equal(e.t, "timeout again", r.LastError)
	require.Equal(e.t, store.ClaimAcquired, e.claimItem(p2.ItemKey, "w3", hour).Outcome, "a zero retry delay is due at once")
}

func testSkip(e *env) {
	keys := e.payments("b1", 4, time.Time{})
	c := e.claimPending("b1", time.Time{}, 3, "w")
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(c[1:]))
	require.NoError(e.t, err)
	require.Equal(e.t, 2, n)
	e.processing(c[2].ItemKey, "w", hour)

	for _, k := range []store.ItemKey{c[0].ItemKey, c[1].ItemKey} {
		before := e.get(k)
		ok, err := e.s.ControlSkip(e.ctx, k, "biller switched off")
		require.NoError(e.t, err)
		require.True(e.t, ok, "%s from %s", k, before.Status)
		r := e.get(k)
		require.Equal(e.t, store.StatusSkipped, r.Status)
		require.Equal(e.t, "biller switched off", r.LastError)
		require.Greater(e.t, r.Version, before.Version)
		ok, err = e.s.ControlSkip(e.ctx, k, "again")
		require.NoError(e.t, err)
		require.False(e.t, ok, "a Skipped record is not skipped again")
	}
	before := e.get(c[2].ItemKey)
	ok, err := e.s.ControlSkip(e.ctx, c[2].ItemKey, "off")
	require.NoError(e.t, err)
	require.False(e.t, ok, "a Processing record is not skipped")
	require.Equal(e.t, before, e.get(c[2].ItemKey))

	ok, err = e.s.ControlSkip(e.ctx, keys[3], "off")
	require.NoError(e.t, err)
	require.False(e.t, ok, "an item without a record")
	_, err = e.s.ControlGet(e.ctx, keys[3])
	require.ErrorIs(e.t, err, store.ErrNotFound)

	if e.h.ControlInsertNew != nil {
		require.NoError(e.t, e.h.ControlInsertNew(e.ctx, keys[3], "b1"))
		ok, err = e.s.ControlSkip(e.ctx, keys[3], "off")
		require.NoError(e.t, err)
		require.True(e.t, ok, "a New record is skipped")
		require.Equal(e.t, store.StatusSkipped, e.get(keys[3]).Status)
	}
}
