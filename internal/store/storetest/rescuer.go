package storetest

import (
	"time"

	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// rescuerFixture puts one record in every state the rescuer must tell
// apart, all of them older than pause when it returns.
type rescuerFixture struct {
	fetched, queued, queuedDue, queuedLater store.ItemKey
	processingLive, processingExpired       store.ItemKey
	processed, failed, skipped              store.ItemKey
}

func newRescuerFixture(e *env) rescuerFixture {
	e.t.Helper()
	keys := e.payments("b1", 9, e.now().Add(-hour))
	// Oldest first, so c[i].ItemKey == keys[i].
	c := e.claimPending("b1", time.Time{}, 9, "bc")
	require.Equal(e.t, keys, keysOf(c))
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(c[1:]))
	require.NoError(e.t, err)
	require.Equal(e.t, 8, n)

	fx := rescuerFixture{
		fetched: keys[0], queued: keys[1], queuedDue: keys[2], queuedLater: keys[3],
		processingLive: keys[4], processingExpired: keys[5],
		processed: keys[6], failed: keys[7], skipped: keys[8],
	}
	release := func(k store.ItemKey, in time.Duration) {
		p := e.processing(k, "w", hour)
		ok, err := e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: k, Version: p.Version}, Error: "503", RetryIn: in})
		require.NoError(e.t, err)
		require.True(e.t, ok)
	}
	finish := func(k store.ItemKey, st store.Status) {
		p := e.processing(k, "w", hour)
		ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: k, Version: p.Version}, Status: st, Error: "e"})
		require.NoError(e.t, err)
		require.True(e.t, ok)
	}
	release(fx.queuedDue, expire)
	release(fx.queuedLater, hour)
	e.processing(fx.processingLive, "w", hour)
	e.processing(fx.processingExpired, "w", expire)
	finish(fx.processed, store.StatusProcessed)
	finish(fx.failed, store.StatusFailed)
	ok, err := e.s.ControlSkip(e.ctx, fx.skipped, "off")
	require.NoError(e.t, err)
	require.True(e.t, ok)
	time.Sleep(pause)
	return fx
}

func (e *env) listStuck(olderThan time.Duration, limit int) []store.Control {
	e.t.Helper()
	got, err := e.s.ControlListStuck(e.ctx, store.ControlListStuckParams{OlderThan: olderThan, Limit: limit})
	require.NoError(e.t, err, "list stuck")
	return got
}

func testListStuck(e *env) {
	fx := newRescuerFixture(e)
	require.Empty(e.t, e.listStuck(hour, 100), "nothing is an hour old")

	got := e.listStuck(pause/3, 100)
	require.ElementsMatch(e.t, []store.ItemKey{fx.fetched, fx.queued, fx.queuedDue}, controlKeys(got),
		"only Fetched and Queued records, and no Queued record waiting for its retry time")
	for _, c := range got {
		r := e.get(c.ItemKey)
		require.Equal(e.t, r.Status, c.Status)
		require.Equal(e.t, r.Version, c.Version)
		require.Equal(e.t, "b1", c.BillerID)
	}
	require.Len(e.t, e.listStuck(0, 1), 1, "the limit holds")
}

// testListStuckBumps: listing a record bumps its updated-at, so the next
// rescuer pass does not republish it at once; its version stays, so the
// biller consumer still moving it Fetched → Queued is not fenced out.
func testListStuckBumps(e *env) {
	e.payments("b1", 2, time.Time{})
	c := e.claimPending("b1", time.Time{}, 2, "bc")
	n, err := e.s.ControlMarkQueued(e.ctx, fenced(c[1:]))
	require.NoError(e.t, err)
	require.Equal(e.t, 1, n)
	fetched := e.get(c[0].ItemKey)
	queued := e.get(c[1].ItemKey)

	const old = time.Second
	time.Sleep(old + 100*time.Millisecond)
	t0 := e.now()
	got := e.listStuck(old, 100)
	require.ElementsMatch(e.t, []store.ItemKey{fetched.ItemKey, queued.ItemKey}, controlKeys(got))
	for _, c := range got {
		require.Equal(e.t, e.get(c.ItemKey), c, "a listed record is returned as it is after the bump")
	}
	// Both were over a second old; had the first call not bumped them, this
	// call would return them again.
	require.Empty(e.t, e.listStuck(old*8/10, 100), "listed records are not listed again at once")

	for _, before := range []store.Control{fetched, queued} {
		r := e.get(before.ItemKey)
		require.Equal(e.t, before.Status, r.Status)
		require.Equal(e.t, before.Version, r.Version, "listing is not a transition")
		require.False(e.t, r.UpdatedAt.Before(t0), "updated-at %s bumped past %s", r.UpdatedAt, t0)
	}
	n, err = e.s.ControlMarkQueued(e.ctx, []store.Fenced{{ItemKey: fetched.ItemKey, Version: fetched.Version}})
	require.NoError(e.t, err)
	require.Equal(e.t, 1, n, "the consumer's Queued update still applies")
}

func testReclaimExpired(e *env) {
	fx := newRescuerFixture(e)
	extra := e.payments("b2", 2, time.Time{})
	for _, q := range e.queued("b2") {
		e.processing(q.ItemKey, "w", expire)
	}
	time.Sleep(pause)
	before := e.get(fx.processingExpired)

	got, err := e.s.ControlReclaimExpired(e.ctx, store.ControlReclaimExpiredParams{Limit: 1})
	require.NoError(e.t, err)
	require.Len(e.t, got, 1, "the limit holds")
	first := got[0].ItemKey

	got, err = e.s.ControlReclaimExpired(e.ctx, store.ControlReclaimExpiredParams{Limit: 100})
	require.NoError(e.t, err)
	all := append([]store.ItemKey{first}, controlKeys(got)...)
	require.ElementsMatch(e.t, append([]store.ItemKey{fx.processingExpired}, extra...), all, "exactly the Processing records with expired leases")
	for _, c := range got {
		require.Equal(e.t, store.StatusQueued, c.Status)
		require.Equal(e.t, 1, c.Attempts)
		require.Equal(e.t, "lease of w expired", c.LastError, "the last error names the owner whose lease expired")
	}

	r := e.get(fx.processingExpired)
	require.Equal(e.t, store.StatusQueued, r.Status)
	require.Equal(e.t, 1, r.Attempts, "attempts+1")
	require.Empty(e.t, r.Owner)
	require.Equal(e.t, "lease of w expired", r.LastError)
	require.Greater(e.t, r.Version, before.Version)
	require.Equal(e.t, store.StatusProcessing, e.get(fx.processingLive).Status, "a live lease stays")

	ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: before.ItemKey, Version: before.Version}, Status: store.StatusProcessed})
	require.NoError(e.t, err)
	require.False(e.t, ok, "the old holder is fenced out")

	got, err = e.s.ControlReclaimExpired(e.ctx, store.ControlReclaimExpiredParams{Limit: 100})
	require.NoError(e.t, err)
	require.Empty(e.t, got, "a second pass finds nothing")
	p := e.processing(fx.processingExpired, "w2", hour)
	require.Equal(e.t, 1, p.Attempts)
}
