package storetest

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// The batch methods must give each item exactly what the one-item method
// would: these cases put every outcome into one batch.

func (e *env) claimBatch(ps ...store.ControlClaimItemParams) []store.ItemClaimResult {
	e.t.Helper()
	got, err := e.s.ControlClaimBatch(e.ctx, ps)
	require.NoError(e.t, err, "claim batch")
	require.Len(e.t, got, len(ps), "one result per item")
	return got
}

func (e *env) finish(c store.Control, st store.Status) {
	e.t.Helper()
	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: c.ItemKey, Version: c.Version}, Status: st})
	require.NoError(e.t, err)
	require.True(e.t, ok)
}

// testClaimBatchOutcomes: acquired from Queued and Fetched, taken over
// from an expired lease, inserted for a direct item, busy, done, not yet,
// absent, and the errors of one item, side by side in one batch.
func testClaimBatchOutcomes(e *env) {
	e.payments("b1", 7, time.Time{})
	q := e.queued("b1")
	e.payments("b1", 1, time.Time{})
	fetched := e.claimPending("b1", time.Time{}, 1, "bc")[0]
	absent := e.payments("b1", 1, time.Time{})[0]
	direct := e.insert(store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "d@example.com", CreatedAt: e.now().Add(-hour)})[0]

	busy := e.processing(q[1].ItemKey, "w0", hour)
	e.finish(e.processing(q[2].ItemKey, "w0", hour), store.StatusProcessed)
	retry := e.processing(q[3].ItemKey, "w0", hour)
	ok, err := e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: retry.ItemKey, Version: retry.Version}, Error: "503", RetryIn: hour})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	expired := e.processing(q[4].ItemKey, "w0", expire)
	due := e.processing(q[6].ItemKey, "w0", hour)
	ok, err = e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: due.ItemKey, Version: due.Version}, Error: "503", RetryIn: expire})
	require.NoError(e.t, err)
	require.True(e.t, ok)
	time.Sleep(pause)

	claim := func(k store.ItemKey) store.ControlClaimItemParams {
		return store.ControlClaimItemParams{Key: k, BillerID: "b1", Owner: "w1", Lease: hour}
	}
	insert := claim(direct)
	insert.InsertIfAbsent, insert.Origin = true, "direct"
	missing := claim(store.ItemKey{ItemType: items.Payment, ItemID: 987654})
	missing.InsertIfAbsent = true
	unknown := claim(store.ItemKey{ItemType: "invoice", ItemID: 1})
	badLease := claim(q[5].ItemKey)
	badLease.Lease = 0

	t0 := e.now()
	got := e.claimBatch(claim(q[0].ItemKey), claim(fetched.ItemKey), claim(q[1].ItemKey), claim(q[2].ItemKey),
		claim(q[3].ItemKey), claim(q[4].ItemKey), claim(absent), insert, missing, unknown, badLease, claim(q[0].ItemKey), claim(q[6].ItemKey))
	t1 := e.now()

	for _, i := range []int{0, 1, 5, 7, 12} {
		r := got[i]
		require.NoError(e.t, r.Err, "result %d", i)
		require.Equal(e.t, store.ClaimAcquired, r.Outcome, "result %d", i)
		require.Equal(e.t, store.StatusProcessing, r.Control.Status)
		require.Equal(e.t, "w1", r.Control.Owner)
		requireBetween(e, t0.Add(hour), t1.Add(hour), r.Control.LeaseUntil, "lease-until")
		require.Equal(e.t, e.get(r.Control.ItemKey), r.Control, "result %d is the record as stored", i)
	}
	require.Equal(e.t, q[0].ItemKey, got[0].Control.ItemKey)
	require.Equal(e.t, fetched.ItemKey, got[1].Control.ItemKey)
	require.Equal(e.t, q[6].ItemKey, got[12].Control.ItemKey)
	require.True(e.t, got[12].Control.NextAttemptAt.IsZero(), "the claim clears the retry time it waited for: %s", got[12].Control.NextAttemptAt)
	require.Greater(e.t, got[5].Control.Version, expired.Version, "a takeover is a new version")
	require.Equal(e.t, expired.Attempts+1, got[5].Control.Attempts, "a takeover counts an attempt")
	require.Equal(e.t, "direct", got[7].Control.Origin)
	require.Equal(e.t, "b1", got[7].Control.BillerID)

	require.Equal(e.t, store.ClaimBusy, got[2].Outcome)
	require.True(e.t, got[2].RetryAt.Equal(busy.LeaseUntil), "busy until the lease ends")
	require.Equal(e.t, store.ClaimDone, got[3].Outcome)
	require.Equal(e.t, store.ClaimNotYet, got[4].Outcome)
	require.True(e.t, got[4].RetryAt.After(t0.Add(hour/2)), "not yet until the retry time")
	require.Equal(e.t, store.ClaimAbsent, got[6].Outcome)
	_, err = e.s.ControlGet(e.ctx, absent)
	require.ErrorIs(e.t, err, store.ErrNotFound, "an absent item without InsertIfAbsent gets no record")
	require.Error(e.t, got[8].Err, "a direct item without a source row")
	require.ErrorIs(e.t, got[9].Err, store.ErrUnknownItemType)
	require.Error(e.t, got[10].Err, "a zero lease")
	require.Equal(e.t, store.StatusQueued, e.get(q[5].ItemKey).Status, "the item with the bad lease is untouched")
	require.Equal(e.t, store.ClaimBusy, got[11].Outcome, "the same item twice in one batch is taken once")
	require.Equal(e.t, got[0].Control.Version, got[11].Control.Version)

	empty, err := e.s.ControlClaimBatch(e.ctx, nil)
	require.NoError(e.t, err)
	require.Empty(e.t, empty)
}

// testClaimBatchConcurrent: workers claiming random, overlapping batches
// never hold one item at once, and together take every item.
func testClaimBatchConcurrent(e *env) {
	const total, workers, rounds, size = 120, 8, 40, 9
	var rows []store.DemoItem
	for i := 0; i < total; i++ {
		typ := items.Payment
		if i%4 == 0 {
			typ = items.Paperless
		}
		rows = append(rows, store.DemoItem{ItemType: typ, BillerID: "b1", AmountCents: 100, Email: "c@example.com"})
	}
	e.insert(rows...)
	q := e.queued("b1")
	require.Len(e.t, q, total)

	var (
		mu    sync.Mutex
		owner = map[store.ItemKey]string{}
		dups  []string
		wg    sync.WaitGroup
		errs  = make(chan error, workers)
	)
	for w := 0; w < workers; w++ {
		name := fmt.Sprintf("worker-%d", w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				ps := make([]store.ControlClaimItemParams, size)
				for i := range ps {
					ps[i] = store.ControlClaimItemParams{Key: q[rand.IntN(total)].ItemKey, BillerID: "b1", Owner: name, Lease: hour}
				}
				got, err := e.s.ControlClaimBatch(e.ctx, ps)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
				mu.Lock()
				for _, g := range got {
					if g.Err != nil {
						errs <- fmt.Errorf("%s: %w", name, g.Err)
						mu.Unlock()
						return
					}
					if g.Outcome != store.ClaimAcquired {
						continue
					}
					if prev, dup := owner[g.Control.ItemKey]; dup {
						dups = append(dups, fmt.Sprintf("%s by %s and %s", g.Control.ItemKey, prev, name))
					}
					owner[g.Control.ItemKey] = name
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
	require.Empty(e.t, dups, "an item held by two workers")
	// Whatever the random batches missed, one last batch takes.
	var rest []store.ControlClaimItemParams
	for _, c := range q {
		if _, ok := owner[c.ItemKey]; !ok {
			rest = append(rest, store.ControlClaimItemParams{Key: c.ItemKey, BillerID: "b1", Owner: "last", Lease: hour})
		}
	}
	for _, g := range e.claimBatch(rest...) {
		require.Equal(e.t, store.ClaimAcquired, g.Outcome, "%s", g.Control.ItemKey)
		owner[g.Control.ItemKey] = "last"
	}
	require.Len(e.t, owner, total)
	for k, w := range owner {
		r := e.get(k)
		require.Equal(e.t, store.StatusProcessing, r.Status)
		require.Equal(e.t, w, r.Owner, "%s is held by the worker that acquired it", k)
	}
}

// testFinishBatch: each claim is finished if its version still holds it.
func testFinishBatch(e *env) {
	e.payments("b1", 5, time.Time{})
	q := e.queued("b1")
	p := make([]store.Control, 4)
	for i := range p {
		p[i] = e.processing(q[i].ItemKey, "w", hour)
	}
	fence := func(c store.Control) store.Fenced { return store.Fenced{ItemKey: c.ItemKey, Version: c.Version} }
	// The fourth claim's earlier attempt failed transiently.
	released, err := e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: fence(p[3]), Error: "503 unavailable"})
	require.NoError(e.t, err)
	require.True(e.t, released)
	p[3] = e.processing(q[3].ItemKey, "w2", hour)
	stale := fence(p[2])
	stale.Version--
	ps := []store.ControlFinishParams{
		{Fenced: fence(p[0]), Status: store.StatusProcessed},
		{Fenced: fence(p[1]), Status: store.StatusFailed, Error: "rejected"},
		{Fenced: stale, Status: store.StatusProcessed},
		{Fenced: fence(p[3]), Status: store.StatusProcessed},
		{Fenced: store.Fenced{ItemKey: q[4].ItemKey, Version: q[4].Version + 1}, Status: store.StatusProcessed},
		{Fenced: fence(p[3]), Status: store.StatusProcessed},
	}
	t0 := e.now()
	ok, err := e.s.ControlFinishBatch(e.ctx, ps)
	t1 := e.now()
	require.NoError(e.t, err)
	require.Equal(e.t, []bool{true, true, false, true, false, false}, ok, "as ControlFinish one after another would (the last names a claim the fourth ended)")

	r := e.get(p[0].ItemKey)
	require.Equal(e.t, store.StatusProcessed, r.Status)
	require.Greater(e.t, r.Version, p[0].Version)
	requireBetween(e, t0, t1, r.ProcessedAt, "processed-at")
	require.True(e.t, r.LeaseUntil.IsZero(), "no lease once finished")
	require.Equal(e.t, "w", r.Owner, "the owner names the worker that finished it")
	require.Empty(e.t, r.LastError)
	r = e.get(p[1].ItemKey)
	require.Equal(e.t, store.StatusFailed, r.Status)
	require.Equal(e.t, "rejected", r.LastError)
	requireBetween(e, t0, t1, r.FailedAt, "failed-at")
	require.Equal(e.t, "w", r.Owner)
	require.Equal(e.t, p[2], e.get(p[2].ItemKey), "a stale version changes nothing")
	r = e.get(p[3].ItemKey)
	require.Equal(e.t, store.StatusProcessed, r.Status)
	require.Equal(e.t, "503 unavailable", r.LastError, "a finish without an error keeps the last one")
	require.Equal(e.t, "w2", r.Owner)
	require.Equal(e.t, store.StatusQueued, e.get(q[4].ItemKey).Status, "a record that is not Processing changes nothing")

	ok, err = e.s.ControlFinishBatch(e.ctx, ps[:1])
	require.NoError(e.t, err)
	require.Equal(e.t, []bool{false}, ok, "finishing twice is a no-op")
	_, err = e.s.ControlFinishBatch(e.ctx, []store.ControlFinishParams{{Fenced: fence(p[2]), Status: store.StatusQueued}})
	require.Error(e.t, err, "finishing to a status other than Processed or Failed")
	require.Equal(e.t, store.StatusProcessing, e.get(p[2].ItemKey).Status)
	ok, err = e.s.ControlFinishBatch(e.ctx, nil)
	require.NoError(e.t, err)
	require.Empty(e.t, ok)

	// The failed one, retried and then delivered, keeps its error and loses
	// its failure time.
	retried, err := e.s.ControlRetry(e.ctx, store.ControlRetryParams{Keys: []store.ItemKey{p[1].ItemKey}})
	require.NoError(e.t, err)
	require.Len(e.t, retried, 1)
	again := e.processing(p[1].ItemKey, "w3", hour)
	ok, err = e.s.ControlFinishBatch(e.ctx, []store.ControlFinishParams{{Fenced: fence(again), Status: store.StatusProcessed}})
	require.NoError(e.t, err)
	require.Equal(e.t, []bool{true}, ok)
	r = e.get(p[1].ItemKey)
	require.Equal(e.t, store.StatusProcessed, r.Status)
	require.Equal(e.t, "rejected", r.LastError)
	require.True(e.t, r.FailedAt.IsZero(), "a Processed finish clears failed-at")
	require.Equal(e.t, "w3", r.Owner)
}

// testItemEnrichBatch: each row is ItemEnrich's, each error its error.
func testItemEnrichBatch(e *env) {
	keys := e.insert(
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 1234},
		store.DemoItem{ItemType: items.Paperless, BillerID: "b1", Email: "pat@example.com"},
		store.DemoItem{ItemType: items.Payment, BillerID: "b1", AmountCents: 5, SkipAccount: true},
		store.DemoItem{ItemType: items.Payment, BillerID: "b2", AmountCents: 99},
	)
	batch := append([]store.ItemKey{}, keys...)
	batch = append(batch, store.ItemKey{ItemType: "invoice", ItemID: 1}, store.ItemKey{ItemType: items.Payment, ItemID: 987654}, keys[0])
	got, err := e.s.ItemEnrichBatch(e.ctx, batch)
	require.NoError(e.t, err)
	require.Len(e.t, got, len(batch))
	for i, k := range batch {
		want, wantErr := e.s.ItemEnrich(e.ctx, k)
		if wantErr != nil {
			require.Error(e.t, got[i].Err, "%s", k)
			require.Nil(e.t, got[i].Row)
			continue
		}
		require.NoError(e.t, got[i].Err, "%s", k)
		require.Equal(e.t, want, got[i].Row, "%s", k)
	}
	require.ErrorIs(e.t, got[2].Err, store.ErrRelatedMissing)
	require.ErrorIs(e.t, got[4].Err, store.ErrUnknownItemType)
	require.ErrorIs(e.t, got[5].Err, store.ErrRelatedMissing)
	require.Equal(e.t, int64(1234), intOf(e, got[0].Row, "amount_cents"))
	require.Equal(e.t, int64(99), intOf(e, got[3].Row, "amount_cents"))

	empty, err := e.s.ItemEnrichBatch(e.ctx, nil)
	require.NoError(e.t, err)
	require.Empty(e.t, empty)
}

// testBatchPipelineConcurrent runs the pump's three batch updates on the
// same items at once: biller workers claim pending items and mark them
// Queued, while item workers, given each item twice (a redelivery), claim
// them in batches, from Fetched when the Queued update has not committed
// yet, and finish what they acquired. No statement may fail (a deadlock
// between two batches would), no item may be held by two workers, and
// every item ends Processed, finished once.
func testBatchPipelineConcurrent(e *env) {
	const total, billerWorkers, itemWorkers, claimSize, batchSize = 240, 3, 6, 20, 12
	rows := make([]store.DemoItem, total)
	for i := range rows {
		typ := items.Payment
		if i%3 == 0 {
			typ = items.Paperless
		}
		rows[i] = store.DemoItem{ItemType: typ, BillerID: "b1", AmountCents: 100, Email: "p@example.com"}
	}
	e.insert(rows...)

	var (
		mu       sync.Mutex
		holder   = map[store.ItemKey]string{}
		finished = map[store.ItemKey]int{}
		problems []string
		errs     = make(chan error, billerWorkers+itemWorkers)
	)
	published := make(chan store.ItemKey, 2*total)
	var billers sync.WaitGroup
	for w := range billerWorkers {
		owner := fmt.Sprintf("biller-%d", w)
		billers.Go(func() {
			for {
				claimed, err := e.s.ControlClaimPending(e.ctx, store.ControlClaimPendingParams{BillerID: "b1", Limit: claimSize, Owner: owner})
				if err != nil {
					errs <- fmt.Errorf("%s: claim pending: %w", owner, err)
					return
				}
				if len(claimed) == 0 {
					return
				}
				for _, c := range claimed {
					published <- c.ItemKey
					published <- c.ItemKey
				}
				if _, err := e.s.ControlMarkQueued(e.ctx, fenced(claimed)); err != nil {
					errs <- fmt.Errorf("%s: mark queued: %w", owner, err)
					return
				}
			}
		})
	}
	go func() {
		billers.Wait()
		close(published)
	}()

	var workers sync.WaitGroup
	for w := range itemWorkers {
		owner := fmt.Sprintf("item-%d", w)
		workers.Go(func() {
			for key := range published {
				ps := []store.ControlClaimItemParams{{Key: key, BillerID: "b1", Owner: owner, Lease: hour}}
			more:
				for len(ps) < batchSize {
					select {
					case k, ok := <-published:
						if !ok {
							break more
						}
						ps = append(ps, store.ControlClaimItemParams{Key: k, BillerID: "b1", Owner: owner, Lease: hour})
					default:
						break more
					}
				}
				got, err := e.s.ControlClaimBatch(e.ctx, ps)
				if err != nil {
					errs <- fmt.Errorf("%s: claim batch: %w", owner, err)
					return
				}
				var finish []store.ControlFinishParams
				mu.Lock()
				for i, g := range got {
					if g.Err != nil {
						problems = append(problems, fmt.Sprintf("%s: claim %s: %v", owner, ps[i].Key, g.Err))
						continue
					}
					if g.Outcome != store.ClaimAcquired {
						continue
					}
					if prev, held := holder[g.Control.ItemKey]; held {
						problems = append(problems, fmt.Sprintf("%s acquired by %s and %s", g.Control.ItemKey, prev, owner))
					}
					holder[g.Control.ItemKey] = owner
					finish = append(finish, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: g.Control.ItemKey, Version: g.Control.Version}, Status: store.StatusProcessed})
				}
				mu.Unlock()
				ok, err := e.s.ControlFinishBatch(e.ctx, finish)
				if err != nil {
					errs <- fmt.Errorf("%s: finish batch: %w", owner, err)
					return
				}
				mu.Lock()
				for i, done := range ok {
					if done {
						finished[finish[i].ItemKey]++
					} else {
						problems = append(problems, fmt.Sprintf("%s could not finish %s, which it held", owner, finish[i].ItemKey))
					}
				}
				mu.Unlock()
			}
		})
	}
	workers.Wait()
	close(errs)
	for err := range errs {
		require.NoError(e.t, err)
	}
	require.Empty(e.t, problems)
	require.Len(e.t, finished, total, "every item was finished")
	for k, n := range finished {
		require.Equal(e.t, 1, n, "%s finished %d times", k, n)
		require.Equal(e.t, store.StatusProcessed, e.get(k).Status, "%s", k)
	}
}
