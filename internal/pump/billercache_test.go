package pump

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
)

// countingCatalog answers BillerGet after a pause, counting the reads; the
// rest of catalog.Catalog is left nil (a call to it panics the test).
type countingCatalog struct {
	catalog.Catalog
	reads   atomic.Int64
	release chan struct{}
}

func (c *countingCatalog) BillerGet(ctx context.Context, id string) (catalog.Biller, error) {
	c.reads.Add(1)
	select {
	case <-c.release:
	case <-ctx.Done():
		return catalog.Biller{}, ctx.Err()
	}
	if id == "missing" {
		return catalog.Biller{}, catalog.ErrBillerNotFound
	}
	return catalog.Biller{ID: id, Mode: catalog.ModePoll}, nil
}

// TestBillerCacheIsSharedAndReadsOncePerMiss: the jobs made with one Deps
// share a biller cache per trust period, and the handlers that miss one
// biller at the same moment wait for a single catalog read; once the
// period is over, the next miss reads again, once.
func TestBillerCacheIsSharedAndReadsOncePerMiss(t *testing.T) {
	t.Parallel()
	var now atomic.Int64
	now.Store(time.Unix(1_000_000, 0).UnixNano())
	cat := &countingCatalog{release: make(chan struct{})}
	deps := &Deps{Catalog: cat, Now: func() time.Time { return time.Unix(0, now.Load()) }}
	c := deps.billerCache(time.Second)
	require.Same(t, c, deps.billerCache(time.Second), "one cache per period")
	require.NotSame(t, c, deps.billerCache(2*time.Second))

	readAll := func(id string) []error {
		var wg sync.WaitGroup
		errs := make([]error, 64)
		for i := range errs {
			wg.Go(func() {
				b, err := c.get(context.Background(), id)
				if err == nil && b.ID != id {
					err = catalog.ErrBillerNotFound
				}
				errs[i] = err
			})
		}
		// Every handler is waiting (on the read or on its leader) before the
		// catalog answers.
		require.Eventually(t, func() bool { return cat.reads.Load() >= 1 }, 5*time.Second, time.Millisecond)
		time.Sleep(20 * time.Millisecond)
		close(cat.release)
		wg.Wait()
		cat.release = make(chan struct{})
		return errs
	}

	for _, err := range readAll("b1") {
		require.NoError(t, err)
	}
	require.Equal(t, int64(1), cat.reads.Load(), "64 handlers missing one biller read it once")
	close(cat.release) // later reads answer at once
	for range 10 {
		b, err := c.get(context.Background(), "b1")
		require.NoError(t, err)
		require.Equal(t, "b1", b.ID)
	}
	require.Equal(t, int64(1), cat.reads.Load(), "within the period the cache answers")

	now.Add(int64(time.Second))
	_, err := c.get(context.Background(), "b1")
	require.NoError(t, err)
	require.Equal(t, int64(2), cat.reads.Load(), "after the period, one read again")

	_, err = c.get(context.Background(), "missing")
	require.ErrorIs(t, err, catalog.ErrBillerNotFound)
	_, err = c.get(context.Background(), "missing")
	require.ErrorIs(t, err, catalog.ErrBillerNotFound)
	require.Equal(t, int64(3), cat.reads.Load(), "an unknown biller is remembered for the period too")
}

// TestBillerCacheReadOutlivesTheHandlerThatStartedIt: the handler whose
// miss started a shared read gives up when its context ends, at once and
// with its own error, and the handlers waiting on the same read still get
// the biller from it (one read, no cancellation passed on).
func TestBillerCacheReadOutlivesTheHandlerThatStartedIt(t *testing.T) {
	t.Parallel()
	cat := &countingCatalog{release: make(chan struct{})}
	c := newBillerCache(cat, time.Minute, time.Now)

	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	leader := make(chan error, 1)
	go func() {
		_, err := c.get(leaderCtx, "b1")
		leader <- err
	}()
	require.Eventually(t, func() bool { return cat.reads.Load() == 1 }, 5*time.Second, time.Millisecond)

	type result struct {
		b   catalog.Biller
		err error
	}
	waiter := make(chan result, 1)
	go func() {
		b, err := c.get(context.Background(), "b1")
		waiter <- result{b, err}
	}()
	time.Sleep(20 * time.Millisecond) // the waiter joins the read in flight

	cancelLeader()
	select {
	case err := <-leader:
		require.ErrorIs(t, err, context.Canceled, "the leader stops waiting with its own error")
	case <-time.After(5 * time.Second):
		t.Fatal("the leader kept waiting on the read after its context ended")
	}

	close(cat.release)
	r := <-waiter
	require.NoError(t, r.err, "the waiter gets the read, not the leader's cancellation")
	require.Equal(t, "b1", r.b.ID)
	require.Equal(t, int64(1), cat.reads.Load(), "one read served both")
	b, err := c.get(context.Background(), "b1")
	require.NoError(t, err)
	require.Equal(t, "b1", b.ID, "and the read was cached")
	require.Equal(t, int64(1), cat.reads.Load())
}
