package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/datapump/datapump/internal/bus"
)

// pullWait is how long one pull request waits on the server for messages.
const pullWait = 30 * time.Second

// subscriptionRef is a resolved subscription: names and what Receive and
// dead-lettering need to know about its stream and consumer.
type subscriptionRef struct {
	topic, name      string
	stream, consumer string
	// streamCreated distinguishes incarnations of a stream name in the
	// deterministic dead-letter IDs.
	streamCreated time.Time
	// maxDeliveries is the port's limit (the consumer's MaxDeliver minus
	// the reserved delivery); zero means unlimited.
	maxDeliveries int
	streamHandle  jetstream.Stream
	cons          jetstream.Consumer
}

// resolve looks the subscription's stream and consumer up.
func (b *Bus) resolve(ctx context.Context, topic, subscription string) (*subscriptionRef, error) {
	if err := validateTopic(topic); err != nil {
		return nil, err
	}
	if err := validateSubscription(subscription); err != nil {
		return nil, err
	}
	ref := &subscriptionRef{topic: topic, name: subscription, stream: streamName(topic), consumer: consumerName(subscription)}
	s, err := b.js.Stream(ctx, ref.stream)
	if err != nil {
		return nil, fmt.Errorf("topic stream %s: %w", ref.stream, b.closedOr(err))
	}
	c, err := b.js.Consumer(ctx, ref.stream, ref.consumer)
	if err != nil {
		return nil, fmt.Errorf("subscription consumer %s: %w", ref.consumer, b.closedOr(err))
	}
	ref.streamHandle, ref.cons = s, c
	ref.streamCreated = s.CachedInfo().Created
	if maxDeliver := c.CachedInfo().Config.MaxDeliver; maxDeliver > 0 {
		ref.maxDeliveries = max(maxDeliver-1, 1)
	}
	return ref, nil
}

// Receive pulls the subscription's messages into opts.Concurrency handlers
// until ctx is cancelled, then stops pulling, releases the prefetched
// messages, waits for the handlers and returns nil. Handlers get a context
// that ctx's cancellation does not reach, so they can finish and settle.
// A delivery past the subscription's MaxDeliveries (its lock expired on the
// last allowed one) is dead-lettered without calling h. Receive returns an
// error when the subscription does not exist or is deleted while it runs.
//
// Each pull is one Fetch of up to opts.Prefetch messages, reissued when it
// is complete. (The client's continuous Messages/Consume iterators can stop
// issuing pull requests when the previous request is answered before the
// client has recorded that it was sent; they recover only after a missed
// heartbeat, so the loop keeps the request cycle in its own hands.)
func (b *Bus) Receive(ctx context.Context, topic, subscription string, opts bus.ReceiveOptions, h bus.Handler) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	ref, err := b.resolve(ctx, topic, subscription)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it started
		}
		return fmt.Errorf("receive %s/%s: %w", topic, subscription, err)
	}
	concurrency := max(opts.Concurrency, 1)
	prefetch := opts.Prefetch
	if prefetch <= 0 {
		prefetch = concurrency
	}
	stopWatch, err := b.watchMaxDeliveries(ctx, ref)
	if err != nil {
		return fmt.Errorf("receive %s/%s: %w", topic, subscription, err)
	}
	defer stopWatch()

	r := &receiveLoop{
		b:          b,
		ref:        ref,
		h:          h,
		renewEvery: opts.RenewEvery,
		hctx:       context.WithoutCancel(ctx),
		log:        b.log.With("topic", topic, "subscription", subscription),
		work:       make(chan *delivery),
	}
	// One long-lived goroutine per handler slot: a goroutine per message
	// would grow a fresh stack through the handler's deep calls every time.
	for range concurrency {
		r.handlers.Go(func() {
			for d := range r.work {
				r.handle(d)
			}
		})
	}
	// Close stops the pulling too, not only ctx.
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(b.life, cancel)()
	err = r.pull(pctx, prefetch)
	close(r.work)
	r.handlers.Wait()
	if err == nil && ctx.Err() == nil {
		err = b.checkOpen()
	}
	if err != nil {
		return fmt.Errorf("receive %s/%s: %w", topic, subscription, err)
	}
	return nil
}

// receiveLoop is the state one Receive shares with its handlers.
type receiveLoop struct {
	b          *Bus
	ref        *subscriptionRef
	h          bus.Handler
	renewEvery time.Duration
	hctx       context.Context
	log        *slog.Logger
	work       chan *delivery // to the handler goroutines; a send waits for a free one
	handlers   sync.WaitGroup
}

// pull fetches and dispatches until ctx is cancelled or the subscription
// is gone.
func (r *receiveLoop) pull(ctx context.Context, batchSize int) error {
	retry := backoff.NewExponentialBackOff()
	retry.MaxInterval = 10 * time.Second
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, pullWait)
		batch, err := r.ref.cons.Fetch(batchSize, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				r.dispatch(ctx, msg)
			}
			err = batch.Error()
		}
		cancel()
		if err == nil || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			retry.Reset()
			continue
		}
		if err := r.b.checkOpen(); err != nil {
			return err
		}
		if _, cerr := r.b.js.Consumer(ctx, r.ref.stream, r.ref.consumer); errors.Is(cerr, jetstream.ErrConsumerNotFound) || errors.Is(cerr, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("subscription is gone: %w", cerr)
		}
		wait := retry.NextBackOff()
		r.log.Warn("pull failed, retrying", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return nil
}

// dispatch hands one message to a free handler, dead-letters it when it is
// past MaxDeliveries, or releases it when Receive is stopping.
func (r *receiveLoop) dispatch(ctx context.Context, msg jetstream.Msg) {
	d, err := r.delivery(msg)
	if err != nil {
		r.log.Error("unreadable delivery, releasing it", "error", err)
		_ = msg.Nak()
		return
	}
	if d.pastLimit() {
		r.handlers.Go(func() { r.expire(d) })
		return
	}
	if ctx.Err() != nil {
		r.release(d)
		return
	}
	select {
	case r.work <- d:
	case <-ctx.Done():
		r.release(d)
	}
}

// delivery wraps a received message.
func (r *receiveLoop) delivery(msg jetstream.Msg) (*delivery, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("message metadata: %w", err)
	}
	d := &delivery{r: r, msg: msg, meta: meta, count: int(meta.NumDelivered)}
	d.public = bus.NewDelivery(fromNATS(msg.Headers(), msg.Data()), r.ref.topic, r.ref.name, d.count, meta.Timestamp, d)
	return d, nil
}

// handle runs the handler on one delivery, renewing its lock if asked, and
// abandons the delivery if the handler returns without settling it.
func (r *receiveLoop) handle(d *delivery) {
	stopRenew := r.renew(d)
	func() {
		defer func() {
			if p := recover(); p != nil {
				r.log.Error("handler panicked", "message_id", d.public.ID, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			}
		}()
		r.h(r.hctx, d.public)
	}()
	stopRenew()
	if d.isSettled() {
		return
	}
	if err := d.Abandon(r.hctx, 0); err != nil && !errors.Is(err, bus.ErrSettled) {
		r.log.Warn("abandon unsettled delivery", "message_id", d.public.ID, "error", err)
	}
}

// renew renews d's lock every renewEvery until the returned stop is
// called; stop waits for a renewal in flight. A timer, not a goroutine per
// delivery: most messages are settled before the first renewal is due.
func (r *receiveLoop) renew(d *delivery) (stop func()) {
	if r.renewEvery <= 0 {
		return func() {}
	}
	var (
		mu      sync.Mutex
		stopped bool
		timer   *time.Timer
	)
	tick := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		err := d.RenewLock(r.hctx)
		if errors.Is(err, bus.ErrSettled) {
			return
		}
		if err != nil {
			r.log.Warn("renew lock", "message_id", d.public.ID, "error", err)
		}
		timer.Reset(r.renewEvery)
	}
	mu.Lock()
	timer = time.AfterFunc(r.renewEvery, tick)
	mu.Unlock()
	return func() {
		timer.Stop()
		mu.Lock()
		stopped = true
		mu.Unlock()
	}
}

// expire dead-letters a delivery past MaxDeliveries: its lock expired on
// the last allowed delivery.
func (r *receiveLoop) expire(d *delivery) {
	n := r.ref.maxDeliveries
	err := d.settle(func() error {
		return d.deadLetterAndTerm(r.hctx, bus.ReasonMaxDeliveries,
			fmt.Sprintf("lock expired on delivery %d of %d", n, n), n)
	})
	if err != nil {
		r.log.Error("dead-letter expired delivery", "message_id", d.public.ID, "delivery_count", d.count, "error", err)
	}
}

// release hands a delivery that no handler will see back to the broker.
func (r *receiveLoop) release(d *delivery) {
	if d.pastLimit() {
		r.expire(d)
		return
	}
	if err := d.settle(d.msg.Nak); err != nil {
		r.log.Warn("release prefetched delivery", "message_id", d.public.ID, "error", err)
	}
}

// delivery is the bus.Settler of one received message.
type delivery struct {
	r      *receiveLoop
	msg    jetstream.Msg
	meta   *jetstream.MsgMetadata
	count  int
	public *bus.Delivery

	mu      sync.Mutex
	settled bool
}

// pastLimit reports whether this is the reserved delivery beyond
// MaxDeliveries.
func (d *delivery) pastLimit() bool {
	return d.r.ref.maxDeliveries > 0 && d.count > d.r.ref.maxDeliveries
}

func (d *delivery) isSettled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settled
}

// settle runs op once: a second settle returns bus.ErrSettled. A failed op
// leaves the delivery unsettled.
func (d *delivery) settle(op func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return bus.ErrSettled
	}
	if err := d.r.b.checkOpen(); err != nil {
		return err
	}
	if err := op(); err != nil {
		return d.r.b.closedOr(err)
	}
	d.settled = true
	return nil
}

// Complete acknowledges the message without waiting for the server's
// confirmation, as Abandon's nak does: the ack goes out on the connection
// in order, and Close drains it. One lost in transit (the connection
// dropped) means one redelivery after AckWait, which the pump's control
// record turns into a no-op; waiting for the confirmation held a handler
// and cost the server a reply per message (docs/decisions.md).
func (d *delivery) Complete(context.Context) error {
	return d.settle(func() error {
		if err := d.msg.Ack(); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		return nil
	})
}

// Abandon naks the message (with delay when positive); on the last allowed
// delivery it dead-letters it with bus.ReasonMaxDeliveries instead.
func (d *delivery) Abandon(ctx context.Context, delay time.Duration) error {
	return d.settle(func() error {
		if n := d.r.ref.maxDeliveries; n > 0 && d.count >= n {
			return d.deadLetterAndTerm(ctx, bus.ReasonMaxDeliveries,
				fmt.Sprintf("abandoned on delivery %d of %d", d.count, n), d.count)
		}
		var err error
		if delay > 0 {
			err = d.msg.NakWithDelay(delay)
		} else {
			err = d.msg.Nak()
		}
		if err != nil {
			return fmt.Errorf("nak: %w", err)
		}
		return nil
	})
}

// DeadLetter moves the message to the dead-letter stream.
func (d *delivery) DeadLetter(ctx context.Context, reason, description string) error {
	return d.settle(func() error {
		return d.deadLetterAndTerm(ctx, reason, description, d.count)
	})
}

// RenewLock resets the ack timer (InProgress).
func (d *delivery) RenewLock(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return bus.ErrSettled
	}
	if err := d.r.b.checkOpen(); err != nil {
		return err
	}
	if err := d.msg.InProgress(); err != nil {
		return fmt.Errorf("renew lock: %w", d.r.b.closedOr(err))
	}
	return nil
}

// deadLetterAndTerm stores the message in the dead-letter stream, then
// terminates the delivery so it is not redelivered.
func (d *delivery) deadLetterAndTerm(ctx context.Context, reason, description string, count int) error {
	src := deadLetterSource{
		seq:      d.meta.Sequence.Stream,
		header:   d.msg.Headers(),
		data:     d.msg.Data(),
		enqueued: d.meta.Timestamp,
	}
	if err := d.r.b.deadLetter(ctx, d.r.ref, src, reason, description, count); err != nil {
		return err
	}
	if err := d.msg.TermWithReason("dead-lettered: " + headerValue(reason)); err != nil {
		return fmt.Errorf("term dead-lettered message: %w", err)
	}
	return nil
}
