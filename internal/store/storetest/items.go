package storetest

import (
	"fmt"
	"strconv"
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

func testControlGetListCount(e *env) {
	_, err := e.s.ControlGet(e.ctx, store.ItemKey{ItemType: items.Payment, ItemID: 1})
	require.ErrorIs(e.t, err, store.ErrNotFound)

	e.payments("b1", 3, time.Time{})
	e.insert(store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "l@example.com"})
	e.payments("b2", 1, time.Time{})
	b1 := e.claimPending("b1", time.Time{}, 10, "w")
	require.Len(e.t, b1, 4)
	e.claimPending("b2", time.Time{}, 10, "w")
	var paperless, done store.ItemKey
	for _, c := range b1 {
		if c.ItemType == items.Paperless {
			paperless = c.ItemKey
		}
	}
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(b1[:2]))
	require.NoError(e.t, err)
	require.Equal(e.t, 2, n)
	done = b1[0].ItemKey
	if done == paperless {
		done = b1[1].ItemKey
	}
	p := e.processing(done, "w", hour)
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: done, Version: p.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	// b1: 2 Fetched, 1 Queued, 1 Processed; b2: 1 Fetched.

	list := func(p store.ControlListParams) []store.Control {
		e.t.Helper()
		got, err := e.s.ControlList(e.ctx, p)
		require.NoError(e.t, err, "control list %+v", p)
		requireNewestFirst(e, got)
		return got
	}
	all := list(store.ControlListParams{})
	require.Len(e.t, all, 5, "zero limit lists everything (up to the adapter's default)")
	for _, c := range all {
		require.Equal(e.t, e.get(c.ItemKey), c, "list and get agree")
	}
	require.Len(e.t, list(store.ControlListParams{BillerID: "b1"}), 4)
	byType := list(store.ControlListParams{BillerID: "b1", ItemType: items.Paperless})
	require.Equal(e.t, []store.ItemKey{paperless}, controlKeys(byType))
	require.Len(e.t, list(store.ControlListParams{Statuses: []store.Status{store.StatusFetched}}), 3)
	require.Len(e.t, list(store.ControlListParams{BillerID: "b1", Statuses: []store.Status{store.StatusFetched, store.StatusQueued}}), 3)
	require.Len(e.t, list(store.ControlListParams{Statuses: []store.Status{store.StatusFailed}}), 0)
	newest := list(store.ControlListParams{Limit: 2})
	require.Len(e.t, newest, 2)
	require.Equal(e.t, controlKeys(all[:2]), controlKeys(newest), "the limit takes the newest")
	for _, c := range list(store.ControlListParams{BillerID: "b2"}) {
		require.Equal(e.t, "b2", c.BillerID)
	}

	require.Equal(e.t, map[string]int64{"b1/Fetched": 2, "b1/Queued": 1, "b2/Fetched": 1}, e.countByStatus(store.ControlCountParams{}))
	require.Equal(e.t, map[string]int64{"b1/Fetched": 2, "b1/Queued": 1, "b1/Processed": 1, "b2/Fetched": 1},
		e.countByStatus(store.ControlCountParams{WithProcessed: true}))
}

// requireNewestFirst requires ControlList's order: by created-at, then
// item type, then id, all descending. The records one claim created share
// their created-at, so the item type and id decide among them.
func requireNewestFirst(e *env, list []store.Control) {
	e.t.Helper()
	for i := 1; i < len(list); i++ {
		a, b := list[i-1], list[i]
		after := a.CreatedAt.After(b.CreatedAt) || a.CreatedAt.Equal(b.CreatedAt) &&
			(a.ItemType > b.ItemType || a.ItemType == b.ItemType && a.ItemID > b.ItemID)
		require.True(e.t, after, "control list: %s (created %s) is listed before %s (created %s)",
			a.ItemKey, a.CreatedAt, b.ItemKey, b.CreatedAt)
	}
}

// countByStatus runs ControlCountByStatus and returns its counts by
// "biller/status", requiring one positive row per pair, ordered by biller
// and then by the status's place in store.Statuses.
func (e *env) countByStatus(p store.ControlCountParams) map[string]int64 {
	e.t.Helper()
	rows, err := e.s.ControlCountByStatus(e.ctx, p)
	require.NoError(e.t, err, "count by status %+v", p)
	place := map[store.Status]int{}
	for i, st := range store.Statuses {
		place[st] = i
	}
	got := map[string]int64{}
	for i, r := range rows {
		k := r.BillerID + "/" + string(r.Status)
		_, dup := got[k]
		require.False(e.t, dup, "%s counted twice", k)
		require.Positive(e.t, r.Count, "%s: a pair without records has no row", k)
		_, known := place[r.Status]
		require.True(e.t, known, "%s: unknown status", k)
		if i > 0 {
			prev := rows[i-1]
			require.True(e.t, prev.BillerID < r.BillerID || prev.BillerID == r.BillerID && place[prev.Status] < place[r.Status],
				"rows ordered by biller, then status: %s before %s", prev.BillerID+"/"+string(prev.Status), k)
		}
		got[k] = r.Count
	}
	return got
}

// testControlCountByStatus: without WithProcessed every status but
// Processed is counted, and a biller with only Processed records has no
// row; with it every record is.
func testControlCountByStatus(e *env) {
	e.payments("b1", 7, time.Time{})
	c := e.claimPending("b1", time.Time{}, 7, "bc")
	require.Len(e.t, c, 7)
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(c[1:]))
	require.NoError(e.t, err)
	require.Equal(e.t, 6, n)
	e.processing(c[1].ItemKey, "w", hour)
	e.finish(e.processing(c[2].ItemKey, "w", hour), store.StatusProcessed)
	e.finish(e.processing(c[3].ItemKey, "w", hour), store.StatusProcessed)
	failed := e.processing(c[4].ItemKey, "w", hour)
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: failed.ItemKey, Version: failed.Version}, Status: store.StatusFailed, Error: "400"})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	ok, err = e.s.ControlSkip(e.ctx, c[5].ItemKey, "biller switched off")
	require.NoError(e.t, err)
	require.True(e.t, ok)
	// b1: 1 Fetched, 1 Queued, 1 Processing, 2 Processed, 1 Failed, 1 Skipped.
	open := map[string]int64{"b1/Fetched": 1, "b1/Queued": 1, "b1/Processing": 1, "b1/Failed": 1, "b1/Skipped": 1}
	if e.h.ControlInsertNew != nil {
		k := e.payments("b1", 1, time.Time{})[0]
		require.NoError(e.t, e.h.ControlInsertNew(e.ctx, k, "b1"))
		open["b1/New"] = 1
	}

	e.payments("b2", 2, time.Time{})
	q2 := e.queued("b2")
	e.finish(e.processing(q2[0].ItemKey, "w", hour), store.StatusProcessed)
	open["b2/Queued"] = 1
	e.payments("b3", 1, time.Time{})
	e.finish(e.processing(e.queued("b3")[0].ItemKey, "w", hour), store.StatusProcessed)

	require.Equal(e.t, open, e.countByStatus(store.ControlCountParams{}), "every status but Processed")
	all := map[string]int64{"b1/Processed": 2, "b2/Processed": 1, "b3/Processed": 1}
	for k, n := range open {
		all[k] = n
	}
	require.Equal(e.t, all, e.countByStatus(store.ControlCountParams{WithProcessed: true}), "every record")
}

func testItemEnrich(e *env) {
	keys := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 1234},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "pat@example.com"},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AccountID: 77, AmountCents: 1},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AccountID: 77, AmountCents: 2},
	)
	reg, err := items.NewRegistry(items.Builtin()...)
	require.NoError(e.t, err)

	row, err := e.s.ItemEnrich(e.ctx, keys[0])
	require.NoError(e.t, err)
	require.Equal(e.t, keys[0].ItemID, intOf(e, row, "item_id"))
	require.Equal(e.t, int64(1234), intOf(e, row, "amount_cents"))
	require.Equal(e.t, "b1", stringOf(e, row, "biller_id"))
	require.NotEmpty(e.t, stringOf(e, row, "account_number"))
	require.NotEmpty(e.t, stringOf(e, row, "currency"))
	require.Contains(e.t, row, "customer_name")
	require.Contains(e.t, row, "created_at")
	typ, err := reg.Get(items.Payment)
	require.NoError(e.t, err)
	payload, err := typ.Map(row)
	require.NoError(e.t, err, "the built-in payment mapping accepts the row")
	require.Equal(e.t, keys[0].ItemID, payload.(items.PaymentPayload).PaymentID)

	row, err = e.s.ItemEnrich(e.ctx, keys[1])
	require.NoError(e.t, err)
	typ, err = reg.Get(items.Paperless)
	require.NoError(e.t, err)
	payload, err = typ.Map(row)
	require.NoError(e.t, err, "the built-in paperless mapping accepts the row")
	pp := payload.(items.PaperlessPayload)
	require.Equal(e.t, keys[1].ItemID, pp.RegistrationID)
	require.Equal(e.t, "pat@example.com", pp.Email)
	require.Equal(e.t, "b1", pp.BillerID)

	a, err := e.s.ItemEnrich(e.ctx, keys[2])
	require.NoError(e.t, err)
	b, err := e.s.ItemEnrich(e.ctx, keys[3])
	require.NoError(e.t, err)
	require.Equal(e.t, stringOf(e, a, "account_number"), stringOf(e, b, "account_number"), "items naming one account share it")
}

func testItemEnrichMissing(e *env) {
	keys := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 5, SkipAccount: true},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "m@example.com", SkipAccount: true},
	)
	for _, k := range keys {
		_, err := e.s.ItemEnrich(e.ctx, k)
		require.ErrorIs(e.t, err, store.ErrRelatedMissing, "%s without its account", k)
		src, err := e.s.ItemSource(e.ctx, k)
		require.NoError(e.t, err, "the source row itself exists")
		require.Equal(e.t, "b1", src.BillerID)
	}
	_, err := e.s.ItemEnrich(e.ctx, store.ItemKey{ItemType: items.Payment, ItemID: 987654})
	require.ErrorIs(e.t, err, store.ErrRelatedMissing, "no source row")
	_, err = e.s.ItemEnrich(e.ctx, store.ItemKey{ItemType: "invoice", ItemID: 1})
	require.ErrorIs(e.t, err, store.ErrUnknownItemType)
}

func testItemSource(e *env) {
	created := e.now().Add(-hour).Add(123 * time.Millisecond)
	t0 := e.now()
	keys := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b7", AmountCents: 5, CreatedAt: created},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b8", Email: "s@example.com"},
	)
	t1 := e.now()
	src, err := e.s.ItemSource(e.ctx, keys[0])
	require.NoError(e.t, err)
	require.Equal(e.t, keys[0], src.ItemKey)
	require.Equal(e.t, "b7", src.BillerID)
	require.True(e.t, src.CreatedAt.Equal(created), "created-at %s, want %s", src.CreatedAt, created)

	src, err = e.s.ItemSource(e.ctx, keys[1])
	require.NoError(e.t, err)
	require.Equal(e.t, "b8", src.BillerID)
	requireBetween(e, t0, t1, src.CreatedAt, "default created-at (database clock)")

	_, err = e.s.ItemSource(e.ctx, store.ItemKey{ItemType: items.Paperless, ItemID: 987654})
	require.ErrorIs(e.t, err, store.ErrNotFound)
	_, err = e.s.ItemSource(e.ctx, store.ItemKey{ItemType: "invoice", ItemID: 1})
	require.ErrorIs(e.t, err, store.ErrUnknownItemType)
}

func testDemoInsertMany(e *env) {
	const n = 10000
	rows := make([]store.DemoItem, n)
	for i := range rows {
		rows[i] = store.DemoItem{ItemType: items.Payment, BillerID: "b" + strconv.Itoa(i%2), AmountCents: int64(i + 1)}
		if i%4 == 0 {
			rows[i] = store.DemoItem{ItemType: items.Paperless, BillerID: "b" + strconv.Itoa(i%2), Email: fmt.Sprintf("u%d@example.com", i)}
		}
	}
	keys := e.insert(rows...)
	seen := map[store.ItemKey]bool{}
	last := map[string]int64{}
	for i, k := range keys {
		require.Equal(e.t, rows[i].ItemType, k.ItemType, "keys in the order of the items")
		require.False(e.t, seen[k], "key %s twice", k)
		seen[k] = true
		require.Greater(e.t, k.ItemID, last[k.ItemType], "ids grow in insert order")
		last[k.ItemType] = k.ItemID
	}
	require.Equal(e.t, map[string]int64{"b0": n / 2, "b1": n / 2}, e.pending(bc("b0"), bc("b1")))
	row, err := e.s.ItemEnrich(e.ctx, keys[n-1])
	require.NoError(e.t, err)
	require.Equal(e.t, int64(n), intOf(e, row, "amount_cents"))
}

func intOf(e *env, row map[string]any, col string) int64 {
	e.t.Helper()
	v, ok := row[col]
	require.True(e.t, ok, "column %s missing from %v", col, row)
	switch x := v.(type) {
	case int64:
		return x
	case int32:
		return int64(x)
	case int:
		return int64(x)
	case int16:
		return int64(x)
	case float64:
		return int64(x)
	case []byte:
		n, err := strconv.ParseInt(string(x), 10, 64)
		require.NoError(e.t, err, "column %s", col)
		return n
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		require.NoError(e.t, err, "column %s", col)
		return n
	}
	require.Failf(e.t, "not an integer", "column %s is %T", col, v)
	return 0
}

func stringOf(e *env, row map[string]any, col string) string {
	e.t.Helper()
	v, ok := row[col]
	require.True(e.t, ok, "column %s missing from %v", col, row)
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	}
	require.Failf(e.t, "not a string", "column %s is %T", col, v)
	return ""
}
