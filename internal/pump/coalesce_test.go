package pump

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testWait bounds how long a test waits for goroutines to line up (a
// generous bound, not a speed expectation); testTick is how often it looks.
const (
	testWait = 30 * time.Second
	testTick = time.Millisecond
)

// TestCoalescerManyCallers: every call gets its own result, no batch is
// larger than the limit, and every request runs exactly once.
func TestCoalescerManyCallers(t *testing.T) {
	const callers, perCaller, limit = 64, 50, 16
	var (
		mu      sync.Mutex
		ran     = map[int]int{}
		batches []int
	)
	c := newCoalescer(limit, func(_ context.Context, reqs []int) ([]int, error) {
		mu.Lock()
		batches = append(batches, len(reqs))
		for _, r := range reqs {
			ran[r]++
		}
		mu.Unlock()
		out := make([]int, len(reqs))
		for i, r := range reqs {
			out[i] = r * 2
		}
		return out, nil
	})
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for g := range callers {
		wg.Go(func() {
			for i := range perCaller {
				req := g*perCaller + i
				got, err := c.do(context.Background(), req)
				if err != nil || got != 2*req {
					errs <- errors.Join(err, errors.New("wrong result"))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Len(t, ran, callers*perCaller)
	for req, n := range ran {
		require.Equal(t, 1, n, "request %d ran %d times", req, n)
	}
	total := 0
	for _, n := range batches {
		require.LessOrEqual(t, n, limit)
		require.Positive(t, n)
		total += n
	}
	require.Equal(t, callers*perCaller, total)
	require.False(t, c.running, "idle once every call returned")
	require.Empty(t, c.queue)
}

// TestCoalescerGroupsWaitingCalls: calls that arrive while a batch runs
// go together into the next one.
func TestCoalescerGroupsWaitingCalls(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var sizes []int
	c := newCoalescer(100, func(_ context.Context, reqs []string) ([]string, error) {
		sizes = append(sizes, len(reqs))
		if len(sizes) == 1 {
			started <- struct{}{}
			<-release
		}
		return reqs, nil
	})
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = c.do(context.Background(), "first") })
	<-started
	const waiting = 10
	for range waiting {
		wg.Go(func() { _, _ = c.do(context.Background(), "later") })
	}
	require.Eventually(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.queue) == waiting
	}, testWait, testTick)
	close(release)
	wg.Wait()
	require.Equal(t, []int{1, waiting}, sizes)
}

// TestCoalescerErrors: a failed or panicking batch answers every call in
// it with the error, and the next batch runs normally.
func TestCoalescerErrors(t *testing.T) {
	boom := errors.New("database unreachable")
	mode := "fail"
	c := newCoalescer(4, func(_ context.Context, reqs []int) ([]int, error) {
		switch mode {
		case "fail":
			return nil, boom
		case "panic":
			panic("driver bug")
		case "short":
			return reqs[:0], nil
		}
		return reqs, nil
	})
	_, err := c.do(context.Background(), 1)
	require.ErrorIs(t, err, boom)
	mode = "panic"
	_, err = c.do(context.Background(), 2)
	require.ErrorContains(t, err, "driver bug")
	mode = "short"
	_, err = c.do(context.Background(), 3)
	require.ErrorContains(t, err, "returned 0 results")
	mode = "ok"
	got, err := c.do(context.Background(), 4)
	require.NoError(t, err)
	require.Equal(t, 4, got)
}
