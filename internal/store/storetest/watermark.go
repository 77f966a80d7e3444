package storetest

import (
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// The watermark tests write rows with created-at values in the past, after
// later-created rows were claimed: that is what a row whose source
// transaction committed late looks like to the pump.

// pendingWith runs PendingCount with p and returns the counts by biller.
func (e *env) pendingWith(p store.PendingCountParams) map[string]int64 {
	e.t.Helper()
	rows, err := e.s.PendingCount(e.ctx, p)
	require.NoError(e.t, err, "pending count %+v", p)
	out := map[string]int64{}
	for _, r := range rows {
		if r.Pending != 0 {
			out[r.BillerID] = r.Pending
		}
	}
	return out
}

// advance moves the watermarks of the billers with a one-minute lag.
func (e *env) advance(billers ...store.BillerCutover) map[string]int64 {
	e.t.Helper()
	return e.pendingWith(store.PendingCountParams{Billers: billers, WatermarkLag: time.Minute})
}

func (e *env) claimPendingFrom(biller string, from time.Time, limit int) []store.Claimed {
	e.t.Helper()
	got, err := e.s.ControlClaimPending(e.ctx, store.ControlClaimPendingParams{BillerID: biller, From: from, Limit: limit, Owner: "w"})
	require.NoError(e.t, err, "claim pending from %s", from)
	return got
}

func paperless(biller string, createdAt time.Time) store.DemoItem {
	return store.DemoItem{ItemType: items.Paperless, BillerID: biller, Email: "w@example.com", CreatedAt: createdAt}
}

// testWatermarkSkipsHistory: once the watermark passed a biller's claimed
// items, scans, claims and lists start there; a row that commits later
// below it is found by a full scan, which with a lag moves the watermark
// back down to it, so the regular scans, claims and lists find it again.
func testWatermarkSkipsHistory(e *env) {
	now := e.now()
	e.payments("b1", 3, now.Add(-2*hour))
	e.queued("b1")
	e.payments("b2", 1, now.Add(-2*hour))
	require.Equal(e.t, map[string]int64{"b2": 1}, e.advance(bc("b1"), bc("b2")), "advancing also counts")

	late := e.payments("b1", 1, now.Add(-90*time.Minute))
	listB1 := store.PendingListParams{Billers: []store.BillerCutover{bc("b1")}}
	require.Equal(e.t, map[string]int64{"b2": 1}, e.pending(bc("b1"), bc("b2")), "a row below the watermark is not scanned")
	require.Empty(e.t, e.claimPending("b1", time.Time{}, 10, "w"), "nor claimed")
	require.Empty(e.t, e.pendingList(listB1), "nor listed")

	full := store.PendingCountParams{Billers: []store.BillerCutover{bc("b1"), bc("b2")}, Full: true}
	require.Equal(e.t, map[string]int64{"b1": 1, "b2": 1}, e.pendingWith(full), "the full scan finds it")
	require.Equal(e.t, map[string]int64{"b2": 1}, e.pending(bc("b1"), bc("b2")), "a full scan without a lag moves no watermark")
	require.Empty(e.t, e.pendingList(listB1), "so the late row is still not listed")

	full.WatermarkLag = time.Minute
	require.Equal(e.t, map[string]int64{"b1": 1, "b2": 1}, e.pendingWith(full))
	require.Equal(e.t, map[string]int64{"b1": 1, "b2": 1}, e.pending(bc("b1"), bc("b2")), "the full scan moved the watermark back down to the late row")
	require.Equal(e.t, late, sourceKeys(e.pendingList(listB1)), "the list from the lowered watermark has the late row")
	require.Equal(e.t, late, keysOf(e.claimPending("b1", time.Time{}, 10, "w")))
}

// testWatermarkStopsAtPending: the watermark never passes a pending item,
// so a row committed late above the oldest pending item is still found.
func testWatermarkStopsAtPending(e *env) {
	now := e.now()
	first := e.payments("b1", 1, now.Add(-2*hour))
	done := e.payments("b1", 2, now.Add(-100*time.Minute))
	require.Equal(e.t, done, keysOf(e.claimPendingFrom("b1", now.Add(-100*time.Minute), 10)), "From skips the older pending item")
	require.Equal(e.t, map[string]int64{"b1": 1}, e.advance(bc("b1")))

	late := e.payments("b1", 1, now.Add(-110*time.Minute))
	rows := e.pendingRows(bc("b1"))
	requireOldest(e, rows, "b1", 2, now.Add(-2*hour))
	require.Equal(e.t, append(first, late...), keysOf(e.claimPending("b1", time.Time{}, 10, "w")))
}

// testWatermarkPerItemType: each item type has its own watermark; a
// pending item of one type does not hold another type's back.
func testWatermarkPerItemType(e *env) {
	now := e.now()
	pending := e.insert(paperless("b1", now.Add(-2*hour)))
	e.payments("b1", 2, now.Add(-100*time.Minute))
	require.Len(e.t, e.claimPendingFrom("b1", now.Add(-100*time.Minute), 10), 2)
	require.Equal(e.t, map[string]int64{"b1": 1}, e.advance(bc("b1")))

	e.payments("b1", 1, now.Add(-90*time.Minute))
	latePaperless := e.insert(paperless("b1", now.Add(-110*time.Minute)))
	require.Equal(e.t, map[string]int64{"b1": 2}, e.pending(bc("b1")), "the payment watermark passed the late payment; the paperless one did not pass the late registration")
	require.Equal(e.t, append(pending, latePaperless...), keysOf(e.claimPending("b1", time.Time{}, 10, "w")))
}

// testWatermarkCutover: a watermark holds only for cut-overs at or after
// the one it was computed under.
func testWatermarkCutover(e *env) {
	now := e.now()
	cut := now.Add(-hour)
	e.payments("b1", 2, now.Add(-30*time.Minute))
	require.Len(e.t, e.claimPending("b1", cut, 10, "w"), 2)
	require.Empty(e.t, e.advance(store.BillerCutover{BillerID: "b1", CutoverAt: cut}))

	before := e.payments("b1", 1, now.Add(-2*hour))
	late := e.payments("b1", 1, now.Add(-20*time.Minute))
	require.Empty(e.t, e.pending(store.BillerCutover{BillerID: "b1", CutoverAt: cut}), "the late row is below the watermark; the other before the cut-over")
	require.Empty(e.t, e.pending(store.BillerCutover{BillerID: "b1", CutoverAt: cut.Add(time.Minute)}), "a later cut-over keeps the watermark")
	require.Equal(e.t, map[string]int64{"b1": 2}, e.pending(store.BillerCutover{BillerID: "b1", CutoverAt: now.Add(-3 * hour)}),
		"a cut-over moved earlier than the watermark's is scanned from the cut-over")
	got, err := e.s.ControlClaimPending(e.ctx, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: now.Add(-3 * hour), Limit: 10, Owner: "w"})
	require.NoError(e.t, err)
	require.Equal(e.t, append(before, late...), keysOf(got), "and claimed from it")
}

// testWatermarkNoLag: without a lag no watermark moves.
func testWatermarkNoLag(e *env) {
	now := e.now()
	e.payments("b1", 2, now.Add(-2*hour))
	e.queued("b1")
	require.Empty(e.t, e.pending(bc("b1")))
	require.Empty(e.t, e.pendingWith(store.PendingCountParams{Billers: []store.BillerCutover{bc("b1")}, Full: true}))
	late := e.payments("b1", 1, now.Add(-90*time.Minute))
	require.Equal(e.t, map[string]int64{"b1": 1}, e.pending(bc("b1")))
	require.Equal(e.t, late, keysOf(e.claimPending("b1", time.Time{}, 10, "w")))

	_, err := e.s.PendingCount(e.ctx, store.PendingCountParams{Billers: []store.BillerCutover{bc("b1")}, WatermarkLag: -time.Second})
	require.Error(e.t, err, "a negative lag")
}

// testClaimPendingFrom: From is inclusive and never reaches below the cut-over.
func testClaimPendingFrom(e *env) {
	now := e.now()
	k := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 1, CreatedAt: now.Add(-3 * hour)},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 2, CreatedAt: now.Add(-2 * hour)},
		paperless("b1", now.Add(-2*hour)),
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 3, CreatedAt: now.Add(-1 * hour)},
	)
	require.Equal(e.t, []store.ItemKey{k[2], k[1]}, keysOf(e.claimPendingFrom("b1", now.Add(-2*hour), 2)), "from an item's own created-at, across item types")
	got, err := e.s.ControlClaimPending(e.ctx, store.ControlClaimPendingParams{BillerID: "b1", CutoverAt: now.Add(-90 * time.Minute), From: now.Add(-4 * hour), Limit: 10, Owner: "w"})
	require.NoError(e.t, err)
	require.Equal(e.t, k[3:], keysOf(got), "a From before the cut-over starts at the cut-over")
	require.Equal(e.t, k[:1], keysOf(e.claimPending("b1", time.Time{}, 10, "w")))
}
