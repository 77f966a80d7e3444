package bustest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

func (s *suite) testEnsureIsIdempotent(t *testing.T) {
	b := s.newBus(t)
	topic := bus.TopicSpec{Name: NewTestID(), DuplicateWindow: time.Minute}
	s.ensureTopic(t, b, topic)
	s.ensureTopic(t, b, topic)

	sub := bus.SubscriptionSpec{Topic: topic.Name, Name: NewTestID(), LockDuration: s.f.lock(), MaxDeliveries: 5}
	s.ensureSubscription(t, b, sub)
	s.ensureSubscription(t, b, sub)

	// Changed specs update in place.
	if !s.f.FixedDuplicateWindow {
		topic.DuplicateWindow = 2 * time.Minute
		s.ensureTopic(t, b, topic)
	}
	sub.LockDuration = 2 * s.f.lock()
	sub.MaxDeliveries = 7
	s.ensureSubscription(t, b, sub)

	// And the topology still works.
	e := &env{t: t, s: s, b: b, topic: topic.Name, sub: sub}
	res := e.publish(testMessage("after-ensure"))
	require.Equal(t, 1, res.Published)
	h, deliveries := completing(1)
	e.receive(sub.Name, bus.ReceiveOptions{}, h)
	g := waitFor(t, deliveries, s.f.timeout(), "a delivery after re-ensuring")
	require.Equal(t, "after-ensure", g.ID)
	require.NoError(t, g.SettleErr)
}

func (s *suite) testEnsureReportsChanges(t *testing.T) {
	b := s.newBus(t)
	topic := bus.TopicSpec{Name: NewTestID(), DuplicateWindow: time.Minute}
	require.Equal(t, bus.ChangeCreated, s.ensureTopic(t, b, topic), "first EnsureTopic")
	require.Equal(t, bus.ChangeUnchanged, s.ensureTopic(t, b, topic), "EnsureTopic with the same spec")
	if s.f.FixedDuplicateWindow {
		t.Log("the broker cannot change a duplicate window: not asking for an updated topic")
	} else {
		topic.DuplicateWindow = 2 * time.Minute
		require.Equal(t, bus.ChangeUpdated, s.ensureTopic(t, b, topic), "EnsureTopic with a new duplicate window")
		require.Equal(t, bus.ChangeUnchanged, s.ensureTopic(t, b, topic), "EnsureTopic after the update")
	}

	sub := bus.SubscriptionSpec{Topic: topic.Name, Name: NewTestID(), LockDuration: s.f.lock(), MaxDeliveries: 5}
	require.Equal(t, bus.ChangeCreated, s.ensureSubscription(t, b, sub), "first EnsureSubscription")
	require.Equal(t, bus.ChangeUnchanged, s.ensureSubscription(t, b, sub), "EnsureSubscription with the same spec")
	sub.LockDuration = 2 * s.f.lock()
	require.Equal(t, bus.ChangeUpdated, s.ensureSubscription(t, b, sub), "EnsureSubscription with a new lock duration")
	require.Equal(t, bus.ChangeUnchanged, s.ensureSubscription(t, b, sub), "EnsureSubscription after the update")
	sub.MaxDeliveries = 7
	require.Equal(t, bus.ChangeUpdated, s.ensureSubscription(t, b, sub), "EnsureSubscription with new max deliveries")

	// A second subscription on the same topic is created, not reported as
	// a change of the first.
	other := sub
	other.Name = NewTestID()
	require.Equal(t, bus.ChangeCreated, s.ensureSubscription(t, b, other), "another subscription")
	require.Equal(t, bus.ChangeUnchanged, s.ensureSubscription(t, b, sub), "the first subscription again")
}

func (s *suite) testPing(t *testing.T) {
	b := s.newBus(t)
	require.NoError(t, b.Ping(s.ctx))
}

func (s *suite) testRoundTrip(t *testing.T) {
	e := s.setup(t, nil)
	want := testMessage("round-trip")
	res := e.publish(want)
	require.Equal(t, bus.PublishResult{Published: 1}, res)

	h, deliveries := completing(1)
	e.receive(e.sub.Name, bus.ReceiveOptions{}, h)
	g := waitFor(t, deliveries, s.f.timeout(), "the delivery")
	require.Equal(t, want.ID, g.ID)
	require.Equal(t, string(want.Body), g.Body)
	require.Equal(t, want.Properties, g.Properties, "properties round-trip")
	require.Equal(t, e.topic, g.Topic)
	require.Equal(t, e.sub.Name, g.Subscription)
	require.Equal(t, 1, g.DeliveryCount)
	require.False(t, g.EnqueuedAt.IsZero(), "EnqueuedAt is set")
	require.NoError(t, g.SettleErr)
}

func (s *suite) testDuplicates(t *testing.T) {
	e := s.setup(t, nil)
	first := testMessage("dup-a")
	again := testMessage("dup-a")
	again.Body = []byte("a second body under the same MessageID")

	res := e.publish(first, testMessage("dup-b"), again)
	if !s.f.UncountedDuplicates {
		require.Equal(t, bus.PublishResult{Published: 2, Duplicates: 1}, res, "duplicate within one publish")
	}
	res = e.publish(again)
	if !s.f.UncountedDuplicates {
		require.Equal(t, bus.PublishResult{Published: 0, Duplicates: 1}, res, "duplicate in a later publish")
	}
	// A sentinel published last: once it is delivered, the earlier messages
	// (and any duplicate that slipped through) have been delivered too.
	e.publish(testMessage("dup-sentinel"))

	h, deliveries := completing(16)
	e.receive(e.sub.Name, bus.ReceiveOptions{}, h)
	counts := map[string]int{}
	bodies := map[string]string{}
	for counts["dup-sentinel"] == 0 {
		g := waitFor(t, deliveries, s.f.timeout(), "the sentinel")
		require.NoError(t, g.SettleErr)
		counts[g.ID]++
		bodies[g.ID] = g.Body
	}
	require.Equal(t, map[string]int{"dup-a": 1, "dup-b": 1, "dup-sentinel": 1}, counts)
	require.Equal(t, string(first.Body), bodies["dup-a"], "the first copy wins")
}

func (s *suite) testTwoSubscriptions(t *testing.T) {
	e := s.setup(t, nil)
	other := e.addSubscription()
	const n = 5
	msgs := make([]bus.Message, n)
	for i := range msgs {
		msgs[i] = testMessage(fmt.Sprintf("fan-%d", i))
	}
	require.Equal(t, n, e.publish(msgs...).Published)

	for _, sub := range []string{e.sub.Name, other.Name} {
		h, deliveries := completing(2 * n)
		e.receive(sub, bus.ReceiveOptions{Concurrency: 2}, h)
		seen := map[string]bool{}
		for len(seen) < n {
			g := waitFor(t, deliveries, s.f.timeout(), "every message on subscription "+sub)
			require.NoError(t, g.SettleErr)
			require.Equal(t, sub, g.Subscription)
			seen[g.ID] = true
		}
	}
}

func (s *suite) testAbandonWithDelay(t *testing.T) {
	e := s.setup(t, nil)
	e.publish(testMessage("abandon-delay"))

	deliveries := make(chan got, 4)
	e.receive(e.sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
		g := snapshot(d)
		if d.DeliveryCount == 1 {
			g.SettleErr = d.Abandon(ctx, 300*time.Millisecond)
		} else {
			g.SettleErr = d.Complete(ctx)
		}
		deliveries <- g
	})
	first := waitFor(t, deliveries, s.f.timeout(), "the first delivery")
	require.Equal(t, 1, first.DeliveryCount)
	require.NoError(t, first.SettleErr, "Abandon")
	second := waitFor(t, deliveries, s.f.timeout(), "the redelivery")
	require.Equal(t, "abandon-delay", second.ID)
	require.Equal(t, 2, second.DeliveryCount)
	require.Equal(t, first.Body, second.Body)
	require.Equal(t, first.Properties, second.Properties)
	require.NoError(t, second.SettleErr, "Complete")
}

func (s *suite) testUnsettledIsAbandoned(t *testing.T) {
	e := s.setup(t, nil)
	e.publish(testMessage("unsettled"))

	deliveries := make(chan got, 4)
	e.receive(e.sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
		g := snapshot(d)
		if d.DeliveryCount > 1 {
			g.SettleErr = d.Complete(ctx)
		}
		deliveries <- g // the first delivery returns without settling
	})
	require.Equal(t, 1, waitFor(t, deliveries, s.f.timeout(), "the first delivery").DeliveryCount)
	second := waitFor(t, deliveries, s.f.timeout(), "the redelivery of an unsettled message")
	require.Equal(t, 2, second.DeliveryCount)
	require.NoError(t, second.SettleErr)
}

// slowMessage holds one message for three lock durations, keeping it with
// keep, and shows it is delivered only once.
func (s *suite) slowMessage(t *testing.T, opts func(lock time.Duration) bus.ReceiveOptions, keep func(ctx context.Context, d *bus.Delivery, lock time.Duration) error) {
	// A longer lock than the base one leaves room for scheduling delays
	// under -race between renewals.
	lock := 2 * s.f.lock()
	e := s.setup(t, func(spec *bus.SubscriptionSpec) { spec.LockDuration = lock })
	e.publish(testMessage("slow"))

	deliveries := make(chan got, 4)
	o := opts(lock)
	// Two handlers, so a redelivery during the hold would reach the second.
	o.Concurrency = 2
	e.receive(e.sub.Name, o, func(ctx context.Context, d *bus.Delivery) {
		g := snapshot(d)
		deliveries <- g
		if err := keep(ctx, d, lock); err != nil {
			g.SettleErr = fmt.Errorf("keep: %w", err)
		} else {
			g.SettleErr = d.Complete(ctx)
		}
		deliveries <- g
	})
	started := waitFor(t, deliveries, s.f.timeout(), "the delivery")
	require.Equal(t, 1, started.DeliveryCount)
	done := waitFor(t, deliveries, 3*lock+s.f.timeout(), "the slow handler to finish")
	require.Equal(t, 1, done.DeliveryCount, "the message was redelivered while held")
	require.NoError(t, done.SettleErr)
	quiet(t, deliveries, lock+lock/2, "redelivery after Complete")
}

func (s *suite) testRenewLock(t *testing.T) {
	s.slowMessage(t,
		func(time.Duration) bus.ReceiveOptions { return bus.ReceiveOptions{} },
		func(ctx context.Context, d *bus.Delivery, lock time.Duration) error {
			for range 12 { // 12 × lock/4 = 3 lock durations
				time.Sleep(lock / 4)
				if err := d.RenewLock(ctx); err != nil {
					return err
				}
			}
			return nil
		})
}

func (s *suite) testRenewEvery(t *testing.T) {
	s.slowMessage(t,
		func(lock time.Duration) bus.ReceiveOptions { return bus.ReceiveOptions{RenewEvery: lock / 4} },
		func(ctx context.Context, d *bus.Delivery, lock time.Duration) error {
			time.Sleep(3 * lock)
			return nil
		})
}

func (s *suite) testAbandonPastMaxDeliveries(t *testing.T) {
	const maxDeliveries = 3
	e := s.setup(t, func(spec *bus.SubscriptionSpec) { spec.MaxDeliveries = maxDeliveries })
	want := testMessage("poison")
	e.publish(want)

	deliveries := make(chan got, 8)
	e.receive(e.sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
		g := snapshot(d)
		if d.ID == "after-poison" {
			g.SettleErr = d.Complete(ctx)
		} else {
			g.SettleErr = d.Abandon(ctx, 0)
		}
		deliveries <- g
	})
	for i := 1; i <= maxDeliveries; i++ {
		g := waitFor(t, deliveries, s.f.timeout(), fmt.Sprintf("delivery %d", i))
		require.Equal(t, want.ID, g.ID)
		require.Equal(t, i, g.DeliveryCount)
		require.NoError(t, g.SettleErr, "Abandon on delivery %d", i)
	}

	dls := e.deadLetters(e.sub.Name, 1, s.f.timeout())
	require.Len(t, dls, 1)
	dl := dls[0]
	require.Equal(t, want.ID, dl.ID)
	require.Equal(t, string(want.Body), string(dl.Body))
	require.Equal(t, want.Properties, dl.Properties)
	require.Equal(t, bus.ReasonMaxDeliveries, dl.Reason)
	require.Equal(t, maxDeliveries, dl.DeliveryCount)
	require.Equal(t, e.topic, dl.Topic)
	require.Equal(t, e.sub.Name, dl.Subscription)
	require.False(t, dl.DeadLetteredAt.IsZero(), "DeadLetteredAt is set")

	// A message published afterwards arrives, and the poison message did
	// not come back before it.
	e.publish(testMessage("after-poison"))
	g := waitFor(t, deliveries, s.f.timeout(), "the message after the poison one")
	require.Equal(t, "after-poison", g.ID, "the dead-lettered message was delivered again")
	require.NoError(t, g.SettleErr)
}

func (s *suite) testHandlerDeadLetter(t *testing.T) {
	e := s.setup(t, nil)
	ids := []string{"bad-1", "bad-2", "bad-3"}
	for _, id := range ids {
		e.publish(testMessage(id)) // one by one, so the order is certain
	}

	deliveries := make(chan got, 8)
	e.receive(e.sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
		g := snapshot(d)
		g.SettleErr = d.DeadLetter(ctx, "InvalidPayload", "item "+d.ID+": amount is negative")
		deliveries <- g
	})
	for range ids {
		g := waitFor(t, deliveries, s.f.timeout(), "a delivery")
		require.NoError(t, g.SettleErr, "DeadLetter")
	}

	dls := e.deadLetters(e.sub.Name, len(ids), s.f.timeout())
	require.Len(t, dls, len(ids))
	for i, dl := range dls {
		want := testMessage(ids[i])
		require.Equal(t, want.ID, dl.ID, "oldest first")
		require.Equal(t, string(want.Body), string(dl.Body))
		require.Equal(t, want.Properties, dl.Properties)
		require.Equal(t, "InvalidPayload", dl.Reason)
		require.Equal(t, "item "+want.ID+": amount is negative", dl.Description)
		require.Equal(t, 1, dl.DeliveryCount)
		require.Equal(t, e.topic, dl.Topic)
		require.Equal(t, e.sub.Name, dl.Subscription)
	}

	limited, err := e.b.DeadLetters(s.ctx, e.topic, e.sub.Name, 2)
	require.NoError(t, err)
	require.Len(t, limited, 2, "max is respected")
	require.Equal(t, ids[0], limited[0].ID)
	require.Equal(t, ids[1], limited[1].ID)

	again, err := e.b.DeadLetters(s.ctx, e.topic, e.sub.Name, 100)
	require.NoError(t, err)
	require.Len(t, again, len(ids), "DeadLetters does not remove")
}

func (s *suite) testLockExpiryOnLastDelivery(t *testing.T) {
	const maxDeliveries = 2
	e := s.setup(t, func(spec *bus.SubscriptionSpec) { spec.MaxDeliveries = maxDeliveries })
	want := testMessage("expires")
	e.publish(want)

	release := make(chan struct{})
	deliveries := make(chan got, 8)
	r := e.receive(e.sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
		g := snapshot(d)
		if d.DeliveryCount < maxDeliveries {
			g.SettleErr = d.Abandon(ctx, 0)
			deliveries <- g
			return
		}
		deliveries <- g
		// Hold the last allowed delivery, neither settling nor renewing,
		// until its lock has long expired; then return without settling.
		<-release
	})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before the receiver's cleanup if the test fails
	for i := 1; i <= maxDeliveries; i++ {
		g := waitFor(t, deliveries, s.f.timeout(), fmt.Sprintf("delivery %d", i))
		require.Equal(t, i, g.DeliveryCount)
		require.NoError(t, g.SettleErr)
	}

	dls := e.deadLetters(e.sub.Name, 1, 3*e.sub.LockDuration+s.f.timeout())
	require.Len(t, dls, 1)
	dl := dls[0]
	require.Equal(t, want.ID, dl.ID)
	require.Equal(t, string(want.Body), string(dl.Body))
	require.Equal(t, want.Properties, dl.Properties)
	require.Equal(t, bus.ReasonMaxDeliveries, dl.Reason)
	require.Equal(t, maxDeliveries, dl.DeliveryCount)

	// The stale handler returns unsettled; its automatic abandon must not
	// dead-letter the message a second time.
	unblock()
	r.stop()
	dls, err := e.b.DeadLetters(s.ctx, e.topic, e.sub.Name, 100)
	require.NoError(t, err)
	require.Len(t, dls, 1, "dead-lettered once")
	require.Empty(t, deliveries, "no delivery beyond MaxDeliveries reached a handler")
}

func (s *suite) testDeadLettersEmpty(t *testing.T) {
	e := s.setup(t, nil)
	dls, err := e.b.DeadLetters(s.ctx, e.topic, e.sub.Name, 10)
	require.NoError(t, err)
	require.Empty(t, dls)
}

func (s *suite) testSettleTwice(t *testing.T) {
	e := s.setup(t, nil)
	e.publish(testMessage("settle-twice"))

	errs := make(chan []error, 1)
	e.receive(e.sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
		errs <- []error{
			d.Complete(ctx),
			d.Complete(ctx),
			d.Abandon(ctx, 0),
			d.DeadLetter(ctx, "Late", "after Complete"),
		}
	})
	got := waitFor(t, errs, s.f.timeout(), "the handler")
	require.NoError(t, got[0], "first Complete")
	require.ErrorIs(t, got[1], bus.ErrSettled, "second Complete")
	require.ErrorIs(t, got[2], bus.ErrSettled, "Abandon after Complete")
	require.ErrorIs(t, got[3], bus.ErrSettled, "DeadLetter after Complete")
}

func (s *suite) testGracefulDrain(t *testing.T) {
	e := s.setup(t, nil)
	e.publish(testMessage("drain"))

	started := make(chan struct{})
	release := make(chan struct{})
	var returned atomic.Bool
	settled := make(chan error, 1)
	r := e.receive(e.sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
		close(started)
		<-release
		// Settling still works after the receive context is cancelled.
		settled <- d.Complete(ctx)
		returned.Store(true)
	})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	waitFor(t, started, s.f.timeout(), "the handler to start")
	r.cancel()
	select {
	case err := <-r.done:
		require.FailNow(t, "Receive returned while a handler was in flight", "err: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	unblock()
	r.stop()
	require.True(t, returned.Load(), "Receive returned before the handler did")
	require.NoError(t, <-settled, "Complete during drain")
}

func (s *suite) testConcurrency(t *testing.T) {
	const n = 4
	e := s.setup(t, nil)
	msgs := make([]bus.Message, n)
	for i := range msgs {
		msgs[i] = testMessage(fmt.Sprintf("conc-%d", i))
	}
	e.publish(msgs...)

	arrived := make(chan string, n)
	all := make(chan struct{})
	var active, peak atomic.Int32
	settled := make(chan error, n)
	timeout := s.f.timeout()
	e.receive(e.sub.Name, bus.ReceiveOptions{Concurrency: n}, func(ctx context.Context, d *bus.Delivery) {
		now := active.Add(1)
		for {
			p := peak.Load()
			if now <= p || peak.CompareAndSwap(p, now) {
				break
			}
		}
		arrived <- d.ID
		select {
		case <-all:
		case <-time.After(timeout):
		}
		active.Add(-1)
		settled <- d.Complete(ctx)
	})
	seen := map[string]bool{}
	for len(seen) < n {
		seen[waitFor(t, arrived, timeout, fmt.Sprintf("%d handlers at once (have %d)", n, len(seen)))] = true
	}
	close(all)
	require.EqualValues(t, n, peak.Load(), "handlers in flight at once")
	for range n {
		require.NoError(t, waitFor(t, settled, timeout, "Complete"))
	}
}

func (s *suite) testManyMessages(t *testing.T) {
	const n = 1000
	// A long lock: this case is about delivery counting, not lock expiry.
	e := s.setup(t, func(spec *bus.SubscriptionSpec) { spec.LockDuration = max(30*time.Second, s.f.lock()) })
	msgs := make([]bus.Message, n)
	for i := range msgs {
		msgs[i] = bus.Message{ID: fmt.Sprintf("many-%04d", i), Body: fmt.Appendf(nil, "%d", i)}
	}
	res := e.publish(msgs...)
	require.Equal(t, bus.PublishResult{Published: n}, res)

	var c counter
	var settleErrs atomic.Int32
	complete := make(chan struct{})
	var once atomic.Bool
	r := e.receive(e.sub.Name, bus.ReceiveOptions{Concurrency: 8}, func(ctx context.Context, d *bus.Delivery) {
		if err := d.Complete(ctx); err != nil {
			settleErrs.Add(1)
		}
		if c.add(d.ID) == n && once.CompareAndSwap(false, true) {
			close(complete)
		}
	})
	select {
	case <-complete:
	case <-time.After(2 * s.f.timeout()):
		require.FailNow(t, fmt.Sprintf("timed out waiting for all %d messages, %d arrived", n, len(c.snapshot())))
	}
	r.stop()
	counts := c.snapshot()
	require.Len(t, counts, n)
	for id, k := range counts {
		require.Equal(t, 1, k, "message %s delivered %d times", id, k)
	}
	require.Zero(t, settleErrs.Load(), "Complete errors")
}

func (s *suite) testReceiveUnknownSubscription(t *testing.T) {
	e := s.setup(t, nil)
	ctx, cancel := context.WithTimeout(s.ctx, s.f.timeout())
	defer cancel()
	err := e.b.Receive(ctx, e.topic, NewTestID(), bus.ReceiveOptions{}, func(context.Context, *bus.Delivery) {})
	require.Error(t, err)
	require.NoError(t, ctx.Err(), "Receive waited for its context instead of failing")
}

func (s *suite) testClosed(t *testing.T) {
	e := s.setup(t, nil)
	require.NoError(t, e.b.Close())
	require.NoError(t, e.b.Close(), "Close is idempotent")

	_, err := e.b.Publish(s.ctx, e.topic, testMessage("late"))
	require.ErrorIs(t, err, bus.ErrClosed, "Publish after Close")
	_, err = e.b.EnsureTopic(s.ctx, bus.TopicSpec{Name: e.topic})
	require.ErrorIs(t, err, bus.ErrClosed, "EnsureTopic after Close")
	_, err = e.b.EnsureSubscription(s.ctx, e.sub)
	require.ErrorIs(t, err, bus.ErrClosed, "EnsureSubscription after Close")
	err = e.b.Receive(s.ctx, e.topic, e.sub.Name, bus.ReceiveOptions{}, func(context.Context, *bus.Delivery) {})
	require.ErrorIs(t, err, bus.ErrClosed, "Receive after Close")
	_, err = e.b.DeadLetters(s.ctx, e.topic, e.sub.Name, 1)
	require.ErrorIs(t, err, bus.ErrClosed, "DeadLetters after Close")
	require.ErrorIs(t, e.b.Ping(s.ctx), bus.ErrClosed, "Ping after Close")
}
