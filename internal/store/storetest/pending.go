package storetest

import (
	"fmt"
	"sync"
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

func testPendingCountPerBiller(e *env) {
	e.payments("b1", 3, time.Time{})
	e.insert(
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "a@example.com"},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "b@example.com"},
	)
	e.payments("b2", 1, time.Time{})
	e.payments("b3", 4, time.Time{})

	require.Equal(e.t, map[string]int64{"b1": 5, "b2": 1}, e.pending(bc("b1"), bc("b2")), "only the billers asked for")
	require.Equal(e.t, map[string]int64{"b3": 4}, e.pending(bc("b3")))
	require.Equal(e.t, map[string]int64{}, e.pending(bc("nobody")), "a biller without items")
	require.Equal(e.t, map[string]int64{}, e.pending(), "no billers")
}

func testPendingCountExcludesControlled(e *env) {
	base := e.now().Add(-hour)
	var rows []store.DemoItem
	for i := 0; i < 10; i++ {
		rows = append(rows, store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 100, CreatedAt: base.Add(time.Duration(i) * time.Second)})
	}
	keys := e.insert(rows...)
	require.Equal(e.t, map[string]int64{"b1": 10}, e.pending(bc("b1")))

	// Oldest first: the claim takes keys[0..5].
	c := e.claimPending("b1", time.Time{}, 6, "w")
	require.Equal(e.t, keys[:6], keysOf(c))
	// keys[0] stays Fetched; the others move on.
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(c[1:]))
	require.NoError(e.t, err)
	require.Equal(e.t, 5, n)
	p2 := e.processing(keys[2], "w", hour)
	p3 := e.processing(keys[3], "w", hour)
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: keys[3], Version: p3.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	p4 := e.processing(keys[4], "w", hour)
	ok, err = e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: keys[4], Version: p4.Version}, Status: store.StatusFailed, Error: "bad"})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	ok, err = e.s.ControlSkip(e.ctx, keys[5], "biller switched off")
	require.NoError(e.t, err)
	require.True(e.t, ok)
	// A directly published item: no Fetched step.
	d, err := e.s.ControlClaimItem(e.ctx, store.ControlClaimItemParams{Key: keys[6], BillerID: "b1", Owner: "w", Lease: hour, InsertIfAbsent: true, Origin: "direct"})
	require.NoError(e.t, err)
	require.Equal(e.t, store.ClaimAcquired, d.Outcome)
	require.Equal(e.t, store.StatusProcessing, e.get(keys[2]).Status, "p2 %v", p2)

	require.Equal(e.t, map[string]int64{"b1": 3}, e.pending(bc("b1")), "Fetched, Queued, Processing, Processed, Failed, Skipped are not pending")
	require.Equal(e.t, keys[7:], keysOf(e.claimPending("b1", time.Time{}, 100, "w")), "the claim takes exactly the pending ones")
	require.Equal(e.t, map[string]int64{}, e.pending(bc("b1")))
}

func testPendingCountIncludesNew(e *env) {
	e.requireInsertNew()
	keys := e.payments("b1", 3, time.Time{})
	require.NoError(e.t, e.h.ControlInsertNew(e.ctx, keys[0], "b1"))
	require.Equal(e.t, store.StatusNew, e.get(keys[0]).Status)
	require.Equal(e.t, map[string]int64{"b1": 3}, e.pending(bc("b1")), "a New record is pending")
	e.claimPending("b1", time.Time{}, 1, "w")
	require.Equal(e.t, map[string]int64{"b1": 2}, e.pending(bc("b1")))
}

func testPendingCountCutover(e *env) {
	cut := e.now().Add(-hour)
	before := cut.Add(-time.Minute)
	after := cut.Add(time.Minute)
	e.payments("b1", 2, before)
	e.payments("b1", 1, cut)
	e.payments("b1", 3, after)
	e.insert(store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "x@example.com", CreatedAt: before})
	e.payments("b2", 2, before)

	got := e.pending(
		store.BillerCutover{BillerID: "b1", CutoverAt: cut},
		store.BillerCutover{BillerID: "b2", CutoverAt: before.Add(-time.Minute)},
	)
	require.Equal(e.t, map[string]int64{"b1": 4, "b2": 2}, got, "each biller with its own cut-over; an item created exactly at the cut-over counts")
	require.Equal(e.t, map[string]int64{"b1": 7}, e.pending(bc("b1")), "zero cut-over counts everything")
	require.Equal(e.t, map[string]int64{}, e.pending(store.BillerCutover{BillerID: "b2", CutoverAt: cut}), "everything before the cut-over")
}

func testClaimPendingRecords(e *env) {
	created := e.now().Add(-hour)
	keys := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 10, CreatedAt: created},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 20, CreatedAt: created.Add(time.Second)},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "p@example.com", CreatedAt: created.Add(2 * time.Second)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b2", AmountCents: 30, CreatedAt: created},
	)
	t0 := e.now()
	got := e.claimPending("b1", time.Time{}, 10, "bc-1")
	t1 := e.now()
	require.Equal(e.t, keys[:3], keysOf(got))
	for i, c := range got {
		require.Equal(e.t, "b1", c.BillerID)
		require.Positive(e.t, c.Version)
		require.Zero(e.t, c.Attempts)
		require.True(e.t, c.SourceCreatedAt.Equal(created.Add(time.Duration(i)*time.Second)), "source created-at %s", c.SourceCreatedAt)

		r := e.get(c.ItemKey)
		require.Equal(e.t, c.ItemKey, r.ItemKey)
		require.Equal(e.t, store.StatusFetched, r.Status)
		require.Equal(e.t, c.Version, r.Version, "the claim returns the record's version")
		require.Equal(e.t, "b1", r.BillerID)
		require.Equal(e.t, "poll", r.Origin)
		require.Equal(e.t, "bc-1", r.Owner)
		require.True(e.t, r.SourceCreatedAt.Equal(c.SourceCreatedAt))
		requireBetween(e, t0, t1, r.CreatedAt, "created-at")
		requireBetween(e, t0, t1, r.UpdatedAt, "updated-at")
		requireBetween(e, t0, t1, r.FetchedAt, "fetched-at")
		require.True(e.t, r.QueuedAt.IsZero() && r.ProcessingAt.IsZero() && r.ProcessedAt.IsZero() && r.FailedAt.IsZero())
	}
	require.Empty(e.t, e.claimPending("b1", time.Time{}, 10, "bc-2"), "claimed items are not claimed again")
	require.Equal(e.t, map[string]int64{"b2": 1}, e.pending(bc("b1"), bc("b2")))
}

func testClaimPendingOrder(e *env) {
	base := e.now().Add(-hour)
	at := func(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }
	k := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 1, CreatedAt: at(3)},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "q1@example.com", CreatedAt: at(1)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 2, CreatedAt: at(2)},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "q2@example.com", CreatedAt: at(4)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 3, CreatedAt: at(1)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 4, CreatedAt: at(1)},
	)
	// Ties on created-at are broken by item type, then id ("paperless" < "payment").
	require.Equal(e.t, []store.ItemKey{k[1], k[4]}, keysOf(e.claimPending("b1", time.Time{}, 2, "w")))
	require.Equal(e.t, []store.ItemKey{k[5], k[2], k[0]}, keysOf(e.claimPending("b1", time.Time{}, 3, "w")))
	require.Equal(e.t, []store.ItemKey{k[3]}, keysOf(e.claimPending("b1", time.Time{}, 3, "w")))
	require.Empty(e.t, e.claimPending("b1", time.Time{}, 3, "w"))
}

func testClaimPendingCutover(e *env) {
	cut := e.now().Add(-hour)
	old := e.payments("b1", 2, cut.Add(-time.Millisecond))
	atCut := e.payments("b1", 1, cut)
	newer := e.payments("b1", 2, cut.Add(time.Second))
	got := e.claimPending("b1", cut, 100, "w")
	require.ElementsMatch(e.t, append(atCut, newer...), keysOf(got), "only items at or after the cut-over")
	for _, k := range old {
		_, err := e.s.ControlGet(e.ctx, k)
		require.ErrorIs(e.t, err, store.ErrNotFound, "an item before the cut-over gets no record")
	}
	require.Equal(e.t, map[string]int64{}, e.pending(store.BillerCutover{BillerID: "b1", CutoverAt: cut}))
	require.Equal(e.t, map[string]int64{"b1": 2}, e.pending(bc("b1")))
}

func testClaimPendingNew(e *env) {
	e.requireInsertNew()
	keys := e.payments("b1", 2, time.Time{})
	require.NoError(e.t, e.h.ControlInsertNew(e.ctx, keys[1], "b1"))
	before := e.get(keys[1])
	got := e.claimPending("b1", time.Time{}, 10, "w")
	require.ElementsMatch(e.t, keys, keysOf(got))
	after := e.get(keys[1])
	require.Equal(e.t, store.StatusFetched, after.Status, "New → Fetched")
	require.Greater(e.t, after.Version, before.Version)
	for _, c := range got {
		require.Equal(e.t, e.get(c.ItemKey).Version, c.Version)
	}
}

func testClaimPendingConcurrent(e *env) {
	const total, claimers, batch = 240, 8, 7
	var rows []store.DemoItem
	for i := 0; i < total; i++ {
		typ := items.Payment
		if i%3 == 0 {
			typ = items.Paperless
		}
		rows = append(rows, store.DemoItem{ItemType: typ, BillerID: "b1", AmountCents: 100, Email: "c@example.com"})
	}
	keys := e.insert(rows...)
	e.payments("b2", 5, time.Time{})

	var (
		mu   sync.Mutex
		seen = map[store.ItemKey]string{}
		dups []string
		wg   sync.WaitGroup
		errs = make(chan error, claimers)
	)
	for w := 0; w < claimers; w++ {
		owner := fmt.Sprintf("claimer-%d", w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := e.s.ControlClaimPending(e.ctx, store.ControlClaimPendingParams{BillerID: "b1", Limit: batch, Owner: owner})
				if err != nil {
					errs <- fmt.Errorf("%s: %w", owner, err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, c := range got {
					if prev, dup := seen[c.ItemKey]; dup {
						dups = append(dups, fmt.Sprintf("%s by %s and %s", c.ItemKey, prev, owner))
					}
					seen[c.ItemKey] = owner
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(e.t, err)
	}
	require.Empty(e.t, dups, "an item claimed twice")
	require.Len(e.t, seen, total, "together the claimers take every item")
	for _, k := range keys {
		require.Contains(e.t, seen, k)
	}
	require.Equal(e.t, map[string]int64{"b2": 5}, e.pending(bc("b1"), bc("b2")))
}

// testOutOfOrderID: a row with a lower id that becomes visible after higher
// ids were claimed (its transaction committed late) is still found.
func testOutOfOrderID(e *env) {
	t0 := e.now().Add(-hour)
	high := e.insert(store.DemoItem{ItemType: items.Payment, ItemID: 1000, BillerID: "b1", AmountCents: 1, CreatedAt: t0})
	require.Equal(e.t, int64(1000), high[0].ItemID)
	require.Equal(e.t, high, keysOf(e.claimPending("b1", time.Time{}, 10, "w")))

	low := e.insert(
		store.DemoItem{ItemType: items.Payment, ItemID: 500, BillerID: "b1", AmountCents: 2, CreatedAt: t0.Add(time.Second)},
		store.DemoItem{ItemType: items.Payment, ItemID: 300, BillerID: "b1", AmountCents: 3, CreatedAt: t0.Add(-time.Second)},
	)
	require.Equal(e.t, map[string]int64{"b1": 2}, e.pending(bc("b1")), "lower ids after a higher one was claimed")
	require.ElementsMatch(e.t, low, keysOf(e.claimPending("b1", time.Time{}, 10, "w")))
}

// testOutOfOrderOpenTx: the same with a real transaction that stays open
// while a later row commits and is claimed.
func testOutOfOrderOpenTx(e *env, f Features) {
	if !f.ConcurrentWriters {
		e.t.Skip("the database has one writer at a time: no insert can stay open beside a claim")
	}
	require.NotNil(e.t, e.h.BeginSourceInsert, "harness: BeginSourceInsert is required with ConcurrentWriters")
	lowKeys, commit, err := e.h.BeginSourceInsert(e.ctx, []store.DemoItem{{ItemType: items.Payment, BillerID: "b1", AmountCents: 1}})
	require.NoError(e.t, err, "begin source insert")
	committed := false
	e.t.Cleanup(func() {
		if !committed {
			_ = commit(e.ctx)
		}
	})
	require.Len(e.t, lowKeys, 1)
	high := e.insert(store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 2})
	require.Less(e.t, lowKeys[0].ItemID, high[0].ItemID, "the open transaction took the lower id")

	require.Equal(e.t, map[string]int64{"b1": 1}, e.pending(bc("b1")), "the uncommitted row is invisible")
	require.Equal(e.t, high, keysOf(e.claimPending("b1", time.Time{}, 10, "w")))

	committed = true
	require.NoError(e.t, commit(e.ctx), "commit source insert")
	require.Equal(e.t, map[string]int64{"b1": 1}, e.pending(bc("b1")), "the late row is pending")
	require.Equal(e.t, lowKeys, keysOf(e.claimPending("b1", time.Time{}, 10, "w")), "and claimed")
}

func testMarkQueuedConditional(e *env) {
	e.payments("b1", 3, time.Time{})
	c := e.claimPending("b1", time.Time{}, 10, "w")
	require.Len(e.t, c, 3)

	n, err := e.s.ControlMarkQueued(e.ctx, nil)
	require.NoError(e.t, err)
	require.Zero(e.t, n)

	stale := fenced(c)
	for i := range stale {
		stale[i].Version--
	}
	n, err = e.s.ControlMarkQueued(e.ctx, stale)
	require.NoError(e.t, err)
	require.Zero(e.t, n, "an old version moves nothing")
	for _, x := range c {
		require.Equal(e.t, store.StatusFetched, e.get(x.ItemKey).Status)
		require.Equal(e.t, x.Version, e.get(x.ItemKey).Version)
	}

	mixed := fenced(c[:2])
	mixed = append(mixed, store.Fenced{ItemKey: c[2].ItemKey, Version: c[2].Version + 1})
	n, err = e.s.ControlMarkQueued(e.ctx, mixed)
	require.NoError(e.t, err)
	require.Equal(e.t, 2, n, "only the records at their version")
	for _, x := range c[:2] {
		r := e.get(x.ItemKey)
		require.Equal(e.t, store.StatusQueued, r.Status)
		require.Greater(e.t, r.Version, x.Version)
		require.False(e.t, r.QueuedAt.IsZero(), "queued-at")
		require.Empty(e.t, r.Owner, "the biller consumer's owner is cleared")
	}
	require.Equal(e.t, store.StatusFetched, e.get(c[2].ItemKey).Status)

	n, err = e.s.ControlMarkQueued(e.ctx, fenced(c[:2]))
	require.NoError(e.t, err)
	require.Zero(e.t, n, "a duplicate update is a no-op")

	p := e.processing(c[2].ItemKey, "w", hour)
	n, err = e.s.ControlMarkQueued(e.ctx, []store.Fenced{{ItemKey: c[2].ItemKey, Version: p.Version}})
	require.NoError(e.t, err)
	require.Zero(e.t, n, "a Processing record is not moved back")
	require.Equal(e.t, store.StatusProcessing, e.get(c[2].ItemKey).Status)
}

func requireBetween(e *env, lo, hi, v time.Time, what string) {
	e.t.Helper()
	v = v.UTC()
	require.False(e.t, v.IsZero(), "%s is zero", what)
	require.False(e.t, v.Before(lo.Truncate(time.Millisecond)), "%s %s before %s", what, v, lo)
	require.False(e.t, v.After(hi.Add(time.Millisecond)), "%s %s after %s", what, v, hi)
}
