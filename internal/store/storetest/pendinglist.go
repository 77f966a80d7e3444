package storetest

import (
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// pendingRows runs PendingCount and returns its rows by biller, leaving
// out billers with nothing pending.
func (e *env) pendingRows(billers ...store.BillerCutover) map[string]store.BillerPending {
	e.t.Helper()
	rows, err := e.s.PendingCount(e.ctx, store.PendingCountParams{Billers: billers})
	require.NoError(e.t, err, "pending count")
	out := map[string]store.BillerPending{}
	for _, r := range rows {
		_, dup := out[r.BillerID]
		require.False(e.t, dup, "biller %s counted twice", r.BillerID)
		if r.Pending != 0 {
			out[r.BillerID] = r
		}
	}
	return out
}

// requireOldest requires biller's row to count n items, the oldest created at oldest.
func requireOldest(e *env, rows map[string]store.BillerPending, biller string, n int64, oldest time.Time) {
	e.t.Helper()
	r, ok := rows[biller]
	require.True(e.t, ok, "biller %s has pending items", biller)
	require.Equal(e.t, n, r.Pending, "biller %s pending", biller)
	require.True(e.t, r.OldestCreatedAt.Equal(oldest), "biller %s oldest %s, want %s", biller, r.OldestCreatedAt, oldest)
}

// testPendingCountOldest: each biller's row carries the created-at of its
// oldest pending item, across item types, after its own cut-over, and
// leaving out items that have a record.
func testPendingCountOldest(e *env) {
	base := e.now().Add(-hour).Add(250 * time.Millisecond)
	at := func(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }
	k := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 1, CreatedAt: at(3)},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "o@example.com", CreatedAt: at(1)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 2, CreatedAt: at(2)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b2", AmountCents: 3, CreatedAt: at(5)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b2", AmountCents: 4, CreatedAt: at(10)},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b2", Email: "p@example.com", CreatedAt: at(7)},
	)
	rows := e.pendingRows(bc("b1"), bc("b2"))
	require.Len(e.t, rows, 2)
	requireOldest(e, rows, "b1", 3, at(1))
	requireOldest(e, rows, "b2", 3, at(5))

	rows = e.pendingRows(bc("b1"), store.BillerCutover{BillerID: "b2", CutoverAt: at(6)})
	requireOldest(e, rows, "b1", 3, at(1))
	requireOldest(e, rows, "b2", 2, at(7))

	require.Equal(e.t, k[1:2], keysOf(e.claimPending("b1", time.Time{}, 1, "w")))
	rows = e.pendingRows(bc("b1"))
	requireOldest(e, rows, "b1", 2, at(2))
	e.claimPending("b1", time.Time{}, 10, "w")
	require.Empty(e.t, e.pendingRows(bc("b1")), "nothing pending, no oldest")

	fresh := e.now()
	e.payments("b3", 2, time.Time{})
	rows = e.pendingRows(bc("b3"))
	r := rows["b3"]
	require.Equal(e.t, int64(2), r.Pending)
	require.False(e.t, r.OldestCreatedAt.Before(fresh), "a default created-at comes from the database clock: %s before %s", r.OldestCreatedAt, fresh)
}

func (e *env) pendingList(p store.PendingListParams) []store.SourceRow {
	e.t.Helper()
	got, err := e.s.PendingList(e.ctx, p)
	require.NoError(e.t, err, "pending list %+v", p)
	return got
}

func sourceKeys(rows []store.SourceRow) []store.ItemKey {
	out := make([]store.ItemKey, len(rows))
	for i, r := range rows {
		out[i] = r.ItemKey
	}
	return out
}

// testPendingList: the reconcile sweep sees pending items of the billers
// asked for, from each biller's cut-over on (an item exactly at it
// included), created at least OlderThan ago by the database clock, oldest
// first (then item type, then id), with their biller and created-at.
// Items created "now" stand for the ones a source has just announced.
func testPendingList(e *env) {
	cut := e.now().Add(-2 * hour)
	at := func(d time.Duration) time.Time { return cut.Add(d) }
	k := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 1, CreatedAt: at(-time.Second)},                       // 0: before b1's cut-over
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 2, CreatedAt: at(0)},                                  // 1: exactly at it
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 3, CreatedAt: at(time.Second)},                        // 2
		store.DemoItem{ItemType: items.Paperless, ItemID: 900, BillerID: "b1", Email: "l@example.com", CreatedAt: at(time.Second)}, // 3: ties on created-at: paperless first, though its id is higher
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 4},                                                    // 4: fresh
		store.DemoItem{ItemType: items.Payment, BillerID: "b2", AmountCents: 5, CreatedAt: at(-hour)},                              // 5: b2 has no cut-over
		store.DemoItem{ItemType: items.Paperless, BillerID: "b2", Email: "m@example.com"},                                          // 6: fresh
		store.DemoItem{ItemType: items.Payment, BillerID: "b3", AmountCents: 6, CreatedAt: at(time.Minute)},                        // 7: not asked for
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 7, CreatedAt: at(time.Minute)},                        // 8
	)
	created := map[store.ItemKey]time.Time{
		k[1]: at(0), k[2]: at(time.Second), k[3]: at(time.Second), k[5]: at(-hour), k[8]: at(time.Minute),
	}
	billers := []store.BillerCutover{{BillerID: "b1", CutoverAt: cut}, bc("b2")}
	list := func(older time.Duration, limit int) []store.SourceRow {
		e.t.Helper()
		return e.pendingList(store.PendingListParams{Billers: billers, OlderThan: older, Limit: limit})
	}

	got := list(10*time.Minute, 100)
	want := []store.ItemKey{k[5], k[1], k[3], k[2], k[8]}
	require.Equal(e.t, want, sourceKeys(got), "old pending items of b1 and b2, oldest first")
	for _, r := range got {
		billerID := "b1"
		if r.ItemKey == k[5] {
			billerID = "b2"
		}
		require.Equal(e.t, billerID, r.BillerID, "%s", r.ItemKey)
		require.True(e.t, r.CreatedAt.Equal(created[r.ItemKey]), "%s created-at %s, want %s", r.ItemKey, r.CreatedAt, created[r.ItemKey])
	}
	require.Equal(e.t, want[:2], sourceKeys(list(10*time.Minute, 2)), "limit takes the oldest")
	require.Equal(e.t, want[:1], sourceKeys(list(10*time.Minute, 1)))
	require.GreaterOrEqual(e.t, len(list(10*time.Minute, 0)), len(want), "a zero limit means the adapter's default (at least 5)")

	everything := sourceKeys(list(0, 100))
	require.Len(e.t, everything, len(want)+2, "with no grace, fresh items too")
	require.Equal(e.t, want, everything[:len(want)], "after the old ones")
	require.ElementsMatch(e.t, []store.ItemKey{k[4], k[6]}, everything[len(want):])

	require.Equal(e.t, []store.ItemKey{k[0], k[1], k[3], k[2], k[8]},
		sourceKeys(e.pendingList(store.PendingListParams{Billers: []store.BillerCutover{bc("b1")}, OlderThan: 10 * time.Minute, Limit: 100})),
		"b1 without a cut-over")
	require.Equal(e.t, []store.ItemKey{k[7]},
		sourceKeys(e.pendingList(store.PendingListParams{Billers: []store.BillerCutover{bc("b3")}, OlderThan: 10 * time.Minute, Limit: 100})))
	require.Empty(e.t, e.pendingList(store.PendingListParams{Billers: []store.BillerCutover{bc("nobody")}, OlderThan: 10 * time.Minute, Limit: 100}))
	require.Empty(e.t, e.pendingList(store.PendingListParams{OlderThan: 10 * time.Minute, Limit: 100}), "no billers")
	require.Empty(e.t, e.pendingList(store.PendingListParams{Billers: billers, OlderThan: 4 * hour, Limit: 100}), "nothing that old")
	require.Equal(e.t, []store.ItemKey{k[5]},
		sourceKeys(e.pendingList(store.PendingListParams{Billers: billers, OlderThan: 150 * time.Minute, Limit: 100})),
		"the grace is measured back from the database clock")
}

// testPendingListExcludesControlled: an item with a record in any status
// but New is not pending; a New one is (see PendingList/IncludesNew).
func testPendingListExcludesControlled(e *env) {
	base := e.now().Add(-hour)
	var rows []store.DemoItem
	for i := 0; i < 9; i++ {
		rows = append(rows, store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 100, CreatedAt: base.Add(time.Duration(i) * time.Second)})
	}
	keys := e.insert(rows...)
	list := func() []store.ItemKey {
		e.t.Helper()
		return sourceKeys(e.pendingList(store.PendingListParams{Billers: []store.BillerCutover{bc("b1")}, OlderThan: time.Minute, Limit: 100}))
	}
	require.Equal(e.t, keys, list())

	c := e.claimPending("b1", time.Time{}, 6, "w") // keys[0..5] Fetched
	require.Equal(e.t, keys[:6], keysOf(c))
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(c[1:]))
	require.NoError(e.t, err)
	require.Equal(e.t, 5, n)
	e.processing(keys[2], "w", hour)
	p3 := e.processing(keys[3], "w", hour)
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: keys[3], Version: p3.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	e.fail(keys[4], "bad")
	ok, err = e.s.ControlSkip(e.ctx, keys[5], "off")
	require.NoError(e.t, err)
	require.True(e.t, ok)
	d, err := e.s.ControlClaimItem(e.ctx, store.ControlClaimItemParams{Key: keys[6], BillerID: "b1", Owner: "w", Lease: hour, InsertIfAbsent: true, Origin: "direct"})
	require.NoError(e.t, err)
	require.Equal(e.t, store.ClaimAcquired, d.Outcome)
	// keys[0] Fetched, [1] Queued, [2] Processing, [3] Processed, [4] Failed,
	// [5] Skipped, [6] Processing (direct); [7] and [8] have no record.
	require.Equal(e.t, keys[7:], list())
	e.claimPending("b1", time.Time{}, 100, "w")
	require.Empty(e.t, list())
}

// testPendingListIncludesNew: a New record is still pending, in the list
// and in the count's oldest.
func testPendingListIncludesNew(e *env) {
	e.requireInsertNew()
	base := e.now().Add(-hour)
	keys := e.payments("b1", 1, base)
	keys = append(keys, e.payments("b1", 1, base.Add(time.Second))...)
	require.NoError(e.t, e.h.ControlInsertNew(e.ctx, keys[0], "b1"))
	require.Equal(e.t, store.StatusNew, e.get(keys[0]).Status)
	got := e.pendingList(store.PendingListParams{Billers: []store.BillerCutover{bc("b1")}, OlderThan: time.Minute, Limit: 10})
	require.Equal(e.t, keys, sourceKeys(got))
	requireOldest(e, e.pendingRows(bc("b1")), "b1", 2, base)
	e.claimPending("b1", time.Time{}, 1, "w")
	got = e.pendingList(store.PendingListParams{Billers: []store.BillerCutover{bc("b1")}, OlderThan: time.Minute, Limit: 10})
	require.Equal(e.t, keys[1:], sourceKeys(got))
	requireOldest(e, e.pendingRows(bc("b1")), "b1", 1, base.Add(time.Second))
}
