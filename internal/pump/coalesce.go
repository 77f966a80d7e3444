package pump

import (
	"context"
	"fmt"
	"sync"
)

// coalescer turns concurrent calls of one operation into batches, the way
// a database turns concurrent commits into one flush: a call that finds no
// batch running runs one at once, with every call waiting at that moment
// (up to max); calls that arrive while it runs wait, and the first of them
// runs the next batch with the others. Nothing runs in the background and
// nothing waits on a timer, so at low load a batch is one call and costs
// no extra latency, and under load batches grow by themselves.
type coalescer[Req, Res any] struct {
	run func(ctx context.Context, reqs []Req) ([]Res, error)
	max int

	mu      sync.Mutex
	queue   []*coalescedCall[Req, Res]
	running bool
}

// coalescedCall is one call waiting in a coalescer.
type coalescedCall[Req, Res any] struct {
	req  Req
	res  Res
	err  error
	done chan struct{} // closed once res and err are set
	lead chan struct{} // closed when this call is to run the next batch
}

// newCoalescer returns a coalescer running batches of at most limit calls.
func newCoalescer[Req, Res any](limit int, run func(ctx context.Context, reqs []Req) ([]Res, error)) *coalescer[Req, Res] {
	return &coalescer[Req, Res]{run: run, max: max(limit, 1)}
}

// do runs req in a batch and returns its result. A batch runs with the
// context of the call that runs it; a waiting call does not give up its
// place when its own context ends, so a request that reached the database
// always has its result read by its caller.
func (c *coalescer[Req, Res]) do(ctx context.Context, req Req) (Res, error) {
	call := &coalescedCall[Req, Res]{req: req, done: make(chan struct{}), lead: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, call)
	lead := !c.running
	c.running = true
	c.mu.Unlock()
	if !lead {
		select {
		case <-call.done:
			return call.res, call.err
		case <-call.lead:
		}
	}
	// This call is first in the queue, so the batch it runs holds it.
	c.runBatch(ctx)
	<-call.done
	return call.res, call.err
}

// runBatch takes the waiting calls off the queue, runs them, hands each its
// result and passes the next batch to the first call that arrived since.
func (c *coalescer[Req, Res]) runBatch(ctx context.Context) {
	c.mu.Lock()
	n := min(len(c.queue), c.max)
	batch := c.queue[:n:n]
	c.queue = c.queue[n:]
	c.mu.Unlock()

	reqs := make([]Req, n)
	for i, call := range batch {
		reqs[i] = call.req
	}
	res, err := c.safeRun(ctx, reqs)
	if err == nil && len(res) != n {
		err = fmt.Errorf("batch of %d returned %d results", n, len(res))
	}
	for i, call := range batch {
		if err != nil {
			call.err = err
		} else {
			call.res = res[i]
		}
		close(call.done)
	}

	c.mu.Lock()
	if len(c.queue) > 0 {
		close(c.queue[0].lead)
	} else {
		c.running = false
	}
	c.mu.Unlock()
}

// safeRun turns a panic of run into an error, so the calls waiting on the
// batch are answered rather than left waiting forever.
func (c *coalescer[Req, Res]) safeRun(ctx context.Context, reqs []Req) (res []Res, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("batch panicked: %v", p)
		}
	}()
	return c.run(ctx, reqs)
}
