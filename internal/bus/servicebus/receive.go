package servicebus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/cenkalti/backoff/v5"

	"github.com/datapump/datapump/internal/bus"
)

const (
	// maxCredits is the most messages one ReceiveMessages call may ask
	// for (the SDK's link buffer).
	maxCredits = 5000
	// settleTimeout bounds the settlements and renewals the adapter makes
	// on its own (releasing, dead-lettering expired deliveries, renewing).
	settleTimeout = 30 * time.Second
)

// Receive receives the subscription's messages in peek-lock mode into
// opts.Concurrency handlers, with up to opts.Prefetch more messages
// received ahead of them, until ctx is cancelled. Then it stops
// receiving, abandons the prefetched messages and the ones held for a
// delayed abandon, waits for the handlers, closes the receiver and
// returns nil. Handlers get a context that ctx's cancellation does not
// reach, so in-flight work can finish and settle.
//
// A delivery past the subscription's MaxDeliveries (its lock expired on
// the last allowed one) is dead-lettered with bus.ReasonMaxDeliveries
// without calling h. Receive returns an error when the subscription does
// not exist, the credentials are refused or the bus is closed; other
// receive errors are logged and retried with backoff.
func (b *Bus) Receive(ctx context.Context, topic, subscription string, opts bus.ReceiveOptions, h bus.Handler) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	info, err := b.subscriptionInfo(ctx, topic, subscription)
	if err != nil {
		return fmt.Errorf("receive %s/%s: %w", topic, subscription, err)
	}
	rcv, err := b.client.NewReceiver(topic, subscription, &azservicebus.ReceiverOptions{ReceiveMode: azservicebus.ReceiveModePeekLock})
	if err != nil {
		return fmt.Errorf("receive %s/%s: %w", topic, subscription, b.closedOr(err))
	}
	concurrency := max(opts.Concurrency, 1)
	prefetch := opts.Prefetch
	if prefetch <= 0 {
		prefetch = concurrency
	}
	r := &receiveLoop{
		b:          b,
		rcv:        rcv,
		topic:      topic,
		sub:        subscription,
		info:       info,
		h:          h,
		renewEvery: opts.RenewEvery,
		hctx:       context.WithoutCancel(ctx),
		log:        b.log.With("topic", topic, "subscription", subscription),
		stopHolds:  make(chan struct{}),

		stopRenewals: make(chan struct{}),
	}
	loopErr := r.run(ctx, concurrency, min(concurrency+prefetch, maxCredits))

	closeCtx, cancel := context.WithTimeout(r.hctx, closeTimeout)
	defer cancel()
	if err := rcv.Close(closeCtx); err != nil && !b.closed.Load() {
		r.log.Warn("close receiver", "error", err)
	}
	return loopErr
}

// receiveLoop is the state one Receive shares with its handlers.
type receiveLoop struct {
	b          *Bus
	rcv        receiver
	topic, sub string
	info       subscriptionInfo
	h          bus.Handler
	renewEvery time.Duration
	hctx       context.Context
	log        *slog.Logger

	// side runs dead-lettering of expired deliveries off the loop.
	side sync.WaitGroup
	// renewals are the lock renewal goroutines; stopRenewals ends those of
	// deliveries still unsettled when Receive returns (a failed settle).
	renewals     sync.WaitGroup
	stopRenewals chan struct{}
	// holds are deliveries abandoned with a delay, kept locked until it
	// passes; stopHolds releases them at once.
	holds     sync.WaitGroup
	stopHolds chan struct{}
}

// run receives until ctx is cancelled or a fatal error. At most capacity
// messages are held at once: in handlers, or buffered for them.
func (r *receiveLoop) run(ctx context.Context, concurrency, capacity int) error {
	tokens := make(chan struct{}, capacity)
	buffer := make(chan *delivery, capacity)
	stop := make(chan struct{})
	var handlers sync.WaitGroup
	for range concurrency {
		handlers.Go(func() {
			for {
				select {
				case <-stop:
					return
				case d := <-buffer:
					r.handle(d)
					<-tokens
				}
			}
		})
	}

	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = time.Second
	retry.MaxInterval = 30 * time.Second
	var loopErr error
receiving:
	for {
		select {
		case tokens <- struct{}{}:
		case <-ctx.Done():
			break receiving
		}
		n := 1
	more:
		for n < capacity {
			select {
			case tokens <- struct{}{}:
				n++
			default:
				break more
			}
		}
		msgs, err := r.rcv.ReceiveMessages(ctx, n, nil)
		for range n - len(msgs) {
			<-tokens
		}
		for _, m := range msgs {
			d := r.newDelivery(m)
			switch {
			case ctx.Err() != nil:
				r.release(d)
				<-tokens
			case d.pastLimit():
				r.side.Go(func() {
					r.expire(d)
					<-tokens
				})
			default:
				d.startRenewal()
				buffer <- d // never blocks: a token was taken for it
			}
		}
		if err == nil {
			retry.Reset()
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if r.b.closed.Load() || hasCode(err, azservicebus.CodeNotFound) ||
			hasCode(err, azservicebus.CodeUnauthorizedAccess) || hasCode(err, azservicebus.CodeClosed) {
			loopErr = fmt.Errorf("receive %s/%s: %w", r.topic, r.sub, r.b.closedOr(err))
			break
		}
		wait := retry.NextBackOff()
		r.log.Warn("receive messages failed; retrying", "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			break receiving
		}
	}

	// Stop the handlers taking buffered messages, hand those back, wait
	// for the handlers, then end the delayed abandons.
	close(stop)
	r.releaseBuffered(buffer)
	handlers.Wait()
	r.releaseBuffered(buffer)
	r.side.Wait()
	close(r.stopRenewals)
	r.renewals.Wait()
	close(r.stopHolds)
	r.holds.Wait()
	return loopErr
}

// releaseBuffered abandons every delivery left in the buffer.
func (r *receiveLoop) releaseBuffered(buffer chan *delivery) {
	for {
		select {
		case d := <-buffer:
			r.release(d)
		default:
			return
		}
	}
}

// newDelivery wraps a received message.
func (r *receiveLoop) newDelivery(m *azservicebus.ReceivedMessage) *delivery {
	d := &delivery{r: r, msg: m, count: int(m.DeliveryCount), stopRenew: make(chan struct{})}
	d.public = bus.NewDelivery(fromServiceBus(m), r.topic, r.sub, d.count, deref(m.EnqueuedTime), d)
	return d
}

// handle runs the handler on one delivery and abandons the delivery if
// the handler returns without settling it. A prefetched delivery whose
// lock has already expired is skipped: the broker redelivers it.
func (r *receiveLoop) handle(d *delivery) {
	if d.lockExpired() {
		d.drop()
		r.log.Warn("lock expired while the message waited for a handler; the broker redelivers it",
			"message_id", d.public.ID, "delivery_count", d.count)
		return
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				r.log.Error("handler panicked", "message_id", d.public.ID, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			}
		}()
		r.h(r.hctx, d.public)
	}()
	if d.isSettled() {
		return
	}
	if err := d.Abandon(r.hctx, 0); err != nil && !errors.Is(err, bus.ErrSettled) {
		r.log.Warn("abandon unsettled delivery", "message_id", d.public.ID, "error", err)
	}
}

// release hands a delivery no handler will see back to the broker (which
// counts it as a delivery).
func (r *receiveLoop) release(d *delivery) {
	if d.pastLimit() {
		r.expire(d)
		return
	}
	ctx, cancel := context.WithTimeout(r.hctx, settleTimeout)
	defer cancel()
	err := d.settle(func() error {
		return r.rcv.AbandonMessage(ctx, d.msg, nil)
	})
	if err != nil && !errors.Is(err, bus.ErrSettled) {
		r.log.Warn("release prefetched message", "message_id", d.public.ID, "error", err)
	}
}

// expire dead-letters a delivery past MaxDeliveries: its lock expired on
// the last allowed delivery.
func (r *receiveLoop) expire(d *delivery) {
	ctx, cancel := context.WithTimeout(r.hctx, settleTimeout)
	defer cancel()
	n := r.info.maxDeliveries
	err := d.settle(func() error {
		return d.deadLetter(ctx, bus.ReasonMaxDeliveries, fmt.Sprintf("lock expired on delivery %d of %d", n, n), n)
	})
	if err != nil {
		r.log.Error("dead-letter expired delivery", "message_id", d.public.ID, "delivery_count", d.count, "error", err)
	}
}

// hold keeps an abandoned delivery locked for delay, renewing the lock,
// then abandons it; stopHolds abandons it at once.
func (r *receiveLoop) hold(d *delivery, delay time.Duration) {
	every := r.info.lock / 2
	if r.renewEvery > 0 {
		every = min(every, r.renewEvery)
	}
	every = max(every, 10*time.Millisecond)
	r.holds.Go(func() {
		timer := time.NewTimer(delay)
		defer timer.Stop()
		ticker := time.NewTicker(every)
		defer ticker.Stop()
	wait:
		for {
			select {
			case <-timer.C:
				break wait
			case <-r.stopHolds:
				break wait
			case <-ticker.C:
				ctx, cancel := context.WithTimeout(r.hctx, settleTimeout)
				err := r.rcv.RenewMessageLock(ctx, d.msg, nil)
				cancel()
				if hasCode(err, azservicebus.CodeLockLost) {
					r.log.Warn("lock lost while holding an abandoned message; the broker redelivers it", "message_id", d.public.ID, "error", err)
					return
				}
				if err != nil {
					r.log.Warn("renew lock of an abandoned message", "message_id", d.public.ID, "error", err)
				}
			}
		}
		ctx, cancel := context.WithTimeout(r.hctx, settleTimeout)
		defer cancel()
		if err := r.rcv.AbandonMessage(ctx, d.msg, nil); err != nil {
			r.log.Warn("abandon after delay", "message_id", d.public.ID, "error", err)
		}
	})
}

// delivery is the bus.Settler of one received message.
type delivery struct {
	r      *receiveLoop
	msg    *azservicebus.ReceivedMessage
	count  int
	public *bus.Delivery

	mu      sync.Mutex
	settled bool
	// stopRenew is closed at settlement; renewDone is closed when the
	// renewal goroutine (if any) has returned.
	stopRenew chan struct{}
	renewDone chan struct{}
	stopOnce  sync.Once
}

// pastLimit reports whether this is the reserved delivery beyond
// MaxDeliveries.
func (d *delivery) pastLimit() bool {
	return d.r.info.maxDeliveries > 0 && d.count > d.r.info.maxDeliveries
}

// lastAllowed reports whether this delivery has reached MaxDeliveries.
func (d *delivery) lastAllowed() bool {
	return d.r.info.maxDeliveries > 0 && d.count >= d.r.info.maxDeliveries
}

// lockExpired reports whether the message's lock ran out before a handler
// got it.
func (d *delivery) lockExpired() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.msg.LockedUntil != nil && !d.r.b.now().Before(*d.msg.LockedUntil)
}

func (d *delivery) isSettled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settled
}

// drop marks the delivery settled without telling the broker.
func (d *delivery) drop() {
	d.mu.Lock()
	d.settled = true
	d.mu.Unlock()
	d.stopRenewal()
}

// settle runs op once: a second settle returns bus.ErrSettled. A failed
// op leaves the delivery unsettled, unless the lock is lost (then
// nothing more can be done with it).
func (d *delivery) settle(op func() error) error {
	d.mu.Lock()
	if d.settled {
		d.mu.Unlock()
		return bus.ErrSettled
	}
	if err := d.r.b.checkOpen(); err != nil {
		d.mu.Unlock()
		return err
	}
	err := op()
	if err != nil && hasCode(err, azservicebus.CodeLockLost) {
		d.settled = true
		err = fmt.Errorf("%w: %w", bus.ErrLockLost, err)
	} else if err != nil {
		err = d.r.b.closedOr(err)
	} else {
		d.settled = true
	}
	settled := d.settled
	d.mu.Unlock()
	if settled {
		d.stopRenewal()
	}
	return err
}

// Complete removes the message from the subscription (CompleteMessage).
func (d *delivery) Complete(ctx context.Context) error {
	return d.settle(func() error {
		if err := d.r.rcv.CompleteMessage(ctx, d.msg, nil); err != nil {
			return fmt.Errorf("complete: %w", err)
		}
		return nil
	})
}

// Abandon makes the message available again. With no delay it is
// AbandonMessage. With a delay the adapter keeps the message locked,
// renewing the lock, and abandons it when the delay has passed (see the
// package doc for why). On the last allowed delivery it dead-letters the
// message with bus.ReasonMaxDeliveries instead.
func (d *delivery) Abandon(ctx context.Context, delay time.Duration) error {
	return d.settle(func() error {
		if d.lastAllowed() {
			n := d.r.info.maxDeliveries
			return d.deadLetter(ctx, bus.ReasonMaxDeliveries, fmt.Sprintf("abandoned on delivery %d of %d", d.count, n), d.count)
		}
		if delay > 0 {
			d.r.hold(d, delay)
			return nil
		}
		if err := d.r.rcv.AbandonMessage(ctx, d.msg, nil); err != nil {
			return fmt.Errorf("abandon: %w", err)
		}
		return nil
	})
}

// DeadLetter moves the message to the subscription's dead-letter queue
// (DeadLetterMessage) with the reason and description.
func (d *delivery) DeadLetter(ctx context.Context, reason, description string) error {
	return d.settle(func() error {
		return d.deadLetter(ctx, reason, description, d.count)
	})
}

// deadLetter dead-letters the message, recording the delivery count and
// the time as properties that DeadLetters reads back.
func (d *delivery) deadLetter(ctx context.Context, reason, description string, count int) error {
	err := d.r.rcv.DeadLetterMessage(ctx, d.msg, &azservicebus.DeadLetterOptions{
		Reason:           &reason,
		ErrorDescription: &description,
		PropertiesToModify: map[string]any{
			propDeliveryCount:  int64(count),
			propDeadLetteredAt: d.r.b.now().UTC().Format(time.RFC3339Nano),
		},
	})
	if err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	return nil
}

// RenewLock extends the lock by the subscription's lock duration
// (RenewMessageLock).
func (d *delivery) RenewLock(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.settled {
		return bus.ErrSettled
	}
	if err := d.r.b.checkOpen(); err != nil {
		return err
	}
	if err := d.r.rcv.RenewMessageLock(ctx, d.msg, nil); err != nil {
		if hasCode(err, azservicebus.CodeLockLost) {
			return fmt.Errorf("renew lock: %w: %w", bus.ErrLockLost, err)
		}
		return fmt.Errorf("renew lock: %w", d.r.b.closedOr(err))
	}
	return nil
}

// startRenewal renews the lock every renewEvery until the delivery is
// settled. The Service Bus SDK does not renew locks by itself.
func (d *delivery) startRenewal() {
	every := d.r.renewEvery
	if every <= 0 {
		return
	}
	d.renewDone = make(chan struct{})
	d.r.renewals.Go(func() {
		defer close(d.renewDone)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-d.stopRenew:
				return
			case <-d.r.stopRenewals:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(d.r.hctx, settleTimeout)
				err := d.RenewLock(ctx)
				cancel()
				switch {
				case errors.Is(err, bus.ErrSettled), errors.Is(err, bus.ErrClosed):
					return
				case errors.Is(err, bus.ErrLockLost):
					d.r.log.Warn("lock lost; the broker redelivers the message", "message_id", d.public.ID, "error", err)
					return
				case err != nil:
					d.r.log.Warn("renew lock", "message_id", d.public.ID, "error", err)
				}
			}
		}
	})
}

// stopRenewal stops the renewal goroutine and waits for it.
func (d *delivery) stopRenewal() {
	d.stopOnce.Do(func() { close(d.stopRenew) })
	if d.renewDone != nil {
		<-d.renewDone
	}
}
