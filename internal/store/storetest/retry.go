package storetest

import (
	"fmt"
	"sync"
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// fail claims a Queued or Fetched item and finishes it as Failed with msg.
func (e *env) fail(key store.ItemKey, msg string) store.Control {
	e.t.Helper()
	p := e.processing(key, "w", hour)
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: key, Version: p.Version}, Status: store.StatusFailed, Error: msg})
	require.NoError(e.t, err, "fail %s", key)
	require.True(e.t, ok, "fail %s", key)
	r := e.get(key)
	require.Equal(e.t, store.StatusFailed, r.Status)
	return r
}

func (e *env) retry(p store.ControlRetryParams) []store.Control {
	e.t.Helper()
	got, err := e.s.ControlRetry(e.ctx, p)
	require.NoError(e.t, err, "control retry %+v", p)
	return got
}

// requireUnchanged requires every record to be exactly as before.
func (e *env) requireUnchanged(before []store.Control, what string) {
	e.t.Helper()
	for _, b := range before {
		require.Equal(e.t, b, e.get(b.ItemKey), "%s: %s changed", what, b.ItemKey)
	}
}

// testRetryRecord: a retried record is Queued at the next version with its
// attempts reset, owner and lease cleared, due at once and its last error
// kept; it comes back as it now stands and can be claimed straight away.
func testRetryRecord(e *env) {
	created := e.now().Add(-hour)
	k := e.insert(store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 5, CreatedAt: created})[0]
	e.queued("b1")
	p := e.processing(k, "w1", hour)
	ok, err := e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: k, Version: p.Version}, Error: "503"})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	before := e.fail(k, "400 bad request: account closed")
	require.Equal(e.t, 1, before.Attempts, "the fixture has an attempt to reset")

	t0 := e.now()
	got := e.retry(store.ControlRetryParams{Keys: []store.ItemKey{k}})
	t1 := e.now()
	require.Len(e.t, got, 1)
	r := e.get(k)
	require.Equal(e.t, r, got[0], "the record comes back as it stands after the move")
	require.Equal(e.t, store.StatusQueued, r.Status)
	require.Equal(e.t, before.Version+1, r.Version, "version+1")
	require.Zero(e.t, r.Attempts, "attempts reset")
	require.Equal(e.t, "400 bad request: account closed", r.LastError, "the last error is kept")
	require.Empty(e.t, r.Owner, "no owner")
	require.True(e.t, r.LeaseUntil.IsZero(), "no lease: %s", r.LeaseUntil)
	if !r.NextAttemptAt.IsZero() {
		requireBetween(e, t0, t1, r.NextAttemptAt, "next-attempt-at (now or none)")
	}
	requireBetween(e, t0, t1, r.QueuedAt, "queued-at")
	requireBetween(e, t0, t1, r.UpdatedAt, "updated-at")
	require.Equal(e.t, before.ItemKey, r.ItemKey)
	require.Equal(e.t, before.BillerID, r.BillerID)
	require.Equal(e.t, before.Origin, r.Origin)
	require.True(e.t, r.SourceCreatedAt.Equal(created), "source created-at %s", r.SourceCreatedAt)
	require.True(e.t, r.CreatedAt.Equal(before.CreatedAt), "created-at")

	require.Empty(e.t, e.retry(store.ControlRetryParams{Keys: []store.ItemKey{k}}), "a Queued record is not retried again")
	require.Equal(e.t, r, e.get(k))

	c := e.claimItem(k, "w2", hour)
	require.Equal(e.t, store.ClaimAcquired, c.Outcome, "a retried item is claimable at once")
	require.Equal(e.t, "w2", c.Control.Owner)
	require.Zero(e.t, c.Control.Attempts)
	require.Greater(e.t, c.Control.Version, r.Version)

	// A second failure can be retried again.
	ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: k, Version: c.Control.Version}, Status: store.StatusFailed, Error: "again"})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	got = e.retry(store.ControlRetryParams{BillerID: "b1"})
	require.Equal(e.t, []store.ItemKey{k}, controlKeys(got))
	require.Equal(e.t, "again", got[0].LastError)
	require.Equal(e.t, store.StatusQueued, e.get(k).Status)
}

// failedFixture fails four items, one after another so their failed-at
// values grow, and finishes a fifth as Processed:
// b1 payment, b1 payment, b1 paperless, b2 payment; then b1 payment Processed.
func failedFixture(e *env) (failed []store.Control, processed store.ItemKey) {
	e.t.Helper()
	base := e.now().Add(-hour)
	keys := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 1, CreatedAt: base},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 2, CreatedAt: base.Add(time.Second)},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "f@example.com", CreatedAt: base.Add(2 * time.Second)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b2", AmountCents: 4, CreatedAt: base.Add(3 * time.Second)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 5, CreatedAt: base.Add(4 * time.Second)},
	)
	e.queued("b1")
	e.queued("b2")
	for i, k := range keys[:4] {
		if i > 0 {
			// failed-at comes from the database clock, kept to the millisecond.
			time.Sleep(3 * time.Millisecond)
		}
		failed = append(failed, e.fail(k, fmt.Sprintf("error %d", i)))
		if i > 0 {
			require.True(e.t, failed[i].FailedAt.After(failed[i-1].FailedAt), "failed-at grows: %s then %s", failed[i-1].FailedAt, failed[i].FailedAt)
		}
	}
	p := e.processing(keys[4], "w", hour)
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: keys[4], Version: p.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	return failed, keys[4]
}

// testRetryFilters: every filter narrows the retry, filters combine, the
// failed-at range is inclusive at FailedFrom and exclusive at FailedTo, and
// records come oldest failure first (then item type, then id), so Limit
// takes the oldest. A zero Limit means no limit.
func testRetryFilters(e *env) {
	f, processed := failedFixture(e)
	k := controlKeys(f)
	missing := store.ItemKey{ItemType: items.Payment, ItemID: 987654}
	dry := func(p store.ControlRetryParams) []store.ItemKey {
		e.t.Helper()
		p.DryRun = true
		return controlKeys(e.retry(p))
	}
	cases := []struct {
		name string
		p    store.ControlRetryParams
		want []store.ItemKey
	}{
		{"no filter", store.ControlRetryParams{}, k},
		{"biller b1", store.ControlRetryParams{BillerID: "b1"}, k[:3]},
		{"biller b2", store.ControlRetryParams{BillerID: "b2"}, k[3:]},
		{"unknown biller", store.ControlRetryParams{BillerID: "nobody"}, []store.ItemKey{}},
		{"item type", store.ControlRetryParams{ItemType: items.Paperless}, k[2:3]},
		{"biller and item type", store.ControlRetryParams{BillerID: "b1", ItemType: items.Payment}, k[:2]},
		{"failed from (inclusive)", store.ControlRetryParams{FailedFrom: f[1].FailedAt}, k[1:]},
		{"failed to (exclusive)", store.ControlRetryParams{FailedTo: f[2].FailedAt}, k[:2]},
		{"failed range", store.ControlRetryParams{FailedFrom: f[1].FailedAt, FailedTo: f[3].FailedAt}, k[1:3]},
		{"empty range", store.ControlRetryParams{FailedFrom: f[2].FailedAt, FailedTo: f[2].FailedAt}, []store.ItemKey{}},
		{"keys", store.ControlRetryParams{Keys: []store.ItemKey{k[3], k[0], processed, missing}}, []store.ItemKey{k[0], k[3]}},
		{"keys and item type", store.ControlRetryParams{Keys: []store.ItemKey{k[2], k[0]}, ItemType: items.Payment}, k[:1]},
		{"keys and biller", store.ControlRetryParams{Keys: []store.ItemKey{k[3], k[0]}, BillerID: "b2"}, k[3:]},
		{"empty keys do not filter", store.ControlRetryParams{Keys: []store.ItemKey{}, BillerID: "b1"}, k[:3]},
		{"limit", store.ControlRetryParams{Limit: 2}, k[:2]},
		{"limit after filters", store.ControlRetryParams{FailedFrom: f[1].FailedAt, Limit: 1}, k[1:2]},
	}
	for _, tc := range cases {
		got := dry(tc.p)
		if len(tc.want) == 0 {
			require.Empty(e.t, got, "dry run: %s", tc.name)
			continue
		}
		require.Equal(e.t, tc.want, got, "dry run: %s", tc.name)
	}
	e.requireUnchanged(f, "after the dry runs")

	// The same filters move records for real.
	require.Equal(e.t, k[:1], controlKeys(e.retry(store.ControlRetryParams{BillerID: "b1", ItemType: items.Payment, Limit: 1})))
	require.Equal(e.t, store.StatusQueued, e.get(k[0]).Status)
	e.requireUnchanged(f[1:], "beyond the limit")

	require.Equal(e.t, k[3:], controlKeys(e.retry(store.ControlRetryParams{Keys: []store.ItemKey{k[2], k[3]}, FailedFrom: f[3].FailedAt})))
	e.requireUnchanged(f[1:3], "outside the range")

	require.Empty(e.t, e.retry(store.ControlRetryParams{BillerID: "b2"}), "nothing Failed left for b2")
	require.Equal(e.t, k[1:3], controlKeys(e.retry(store.ControlRetryParams{})), "the rest, oldest failure first")
	require.Empty(e.t, e.retry(store.ControlRetryParams{}))
	for _, x := range k {
		require.Equal(e.t, store.StatusQueued, e.get(x).Status, "%s", x)
	}
	require.Equal(e.t, store.StatusProcessed, e.get(processed).Status)
}

// testRetryDryRun: a dry run changes nothing, not even the version, and
// returns the records that would move as they stand now (still Failed).
func testRetryDryRun(e *env) {
	f, _ := failedFixture(e)
	for range 2 {
		got := e.retry(store.ControlRetryParams{BillerID: "b1", DryRun: true})
		require.Equal(e.t, f[:3], got, "the records as they stand")
		e.requireUnchanged(f, "dry run")
	}
	got := e.retry(store.ControlRetryParams{Keys: []store.ItemKey{f[3].ItemKey}, DryRun: true})
	require.Equal(e.t, f[3:], got)
	e.requireUnchanged(f, "dry run by key")
	for _, c := range f {
		require.Equal(e.t, store.ClaimDone, e.claimItem(c.ItemKey, "w", hour).Outcome, "%s is still Failed", c.ItemKey)
	}
	e.requireUnchanged(f, "claims of Failed records")
}

// testRetryOnlyFailed: records in every other status are never moved, by
// key or by filter, dry run or not.
func testRetryOnlyFailed(e *env) {
	fx := newRescuerFixture(e)
	others := []store.ItemKey{fx.fetched, fx.queued, fx.queuedDue, fx.queuedLater, fx.processingLive, fx.processingExpired, fx.processed, fx.skipped}
	var extra store.ItemKey
	if e.h.ControlInsertNew != nil {
		extra = e.payments("b1", 1, time.Time{})[0]
		require.NoError(e.t, e.h.ControlInsertNew(e.ctx, extra, "b1"))
		others = append(others, extra)
	}
	before := make([]store.Control, len(others))
	for i, k := range others {
		before[i] = e.get(k)
	}
	all := append([]store.ItemKey{fx.failed}, others...)
	for _, dryRun := range []bool{true, false} {
		got := e.retry(store.ControlRetryParams{Keys: others, DryRun: dryRun})
		require.Empty(e.t, got, "dry run %v: only non-Failed keys", dryRun)
		e.requireUnchanged(before, "retry by key")
	}
	got := e.retry(store.ControlRetryParams{Keys: all, DryRun: true})
	require.Equal(e.t, []store.ItemKey{fx.failed}, controlKeys(got))
	got = e.retry(store.ControlRetryParams{BillerID: "b1"})
	require.Equal(e.t, []store.ItemKey{fx.failed}, controlKeys(got), "only the Failed record moves")
	e.requireUnchanged(before, "retry by biller")
	require.Empty(e.t, e.retry(store.ControlRetryParams{Keys: all}))
	e.requireUnchanged(before, "retry of everything again")
}

// testRetryConcurrent: operators retrying the same records at once move
// each one once: every record comes back from exactly one call, one
// version higher.
func testRetryConcurrent(e *env) {
	const n, callers = 24, 4
	keys := e.payments("b1", n, e.now().Add(-hour))
	e.queued("b1")
	before := map[store.ItemKey]int64{}
	for _, k := range keys {
		before[k] = e.fail(k, "boom").Version
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		seen  = map[store.ItemKey]int{}
		errs  = make(chan error, callers)
		start = make(chan struct{})
	)
	for i := range callers {
		p := store.ControlRetryParams{BillerID: "b1"}
		if i%2 == 1 {
			p.Keys = keys
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got, err := e.s.ControlRetry(e.ctx, p)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, c := range got {
				seen[c.ItemKey]++
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(e.t, err)
	}
	require.Len(e.t, seen, n, "together the calls move every record")
	for _, k := range keys {
		require.Equal(e.t, 1, seen[k], "%s returned by %d calls", k, seen[k])
		r := e.get(k)
		require.Equal(e.t, store.StatusQueued, r.Status)
		require.Equal(e.t, before[k]+1, r.Version, "%s moved once", k)
	}
}
