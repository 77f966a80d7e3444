package servicebus

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

// handled is what a test handler saw and got back.
type handled struct {
	d   *bus.Delivery
	err error
}

// settling returns a handler that settles every delivery with settle and
// reports it.
func settling(settle func(ctx context.Context, d *bus.Delivery) error) (bus.Handler, chan handled) {
	ch := make(chan handled, 16)
	return func(ctx context.Context, d *bus.Delivery) {
		ch <- handled{d: d, err: settle(ctx, d)}
	}, ch
}

func next(t *testing.T, ch chan handled) handled {
	t.Helper()
	select {
	case h := <-ch:
		return h
	case <-time.After(10 * time.Second):
		require.FailNow(t, "no delivery reached the handler")
		return handled{}
	}
}

func TestReceiveMapsDelivery(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	handler, got := settling(func(ctx context.Context, d *bus.Delivery) error { return d.Complete(ctx) })
	stop := h.receiving(t, rcv, bus.ReceiveOptions{}, handler)
	rcv.push(received("m-1", 2))

	g := next(t, got)
	require.NoError(t, g.err)
	require.Equal(t, "m-1", g.d.ID)
	require.Equal(t, "body of m-1", string(g.d.Body))
	require.Equal(t, map[string]string{
		"itemType":    "payment",
		"billerId":    "b-7",
		"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	}, g.d.Properties, "the broker's and the adapter's properties are left out")
	require.Equal(t, "items", g.d.Topic)
	require.Equal(t, "consumer", g.d.Subscription)
	require.Equal(t, 2, g.d.DeliveryCount)
	require.Equal(t, testNow.Add(-time.Minute), g.d.EnqueuedAt)
	require.NoError(t, stop())
	require.Equal(t, []string{
		"get subscription items/consumer",
		"new receiver items/consumer mode=0 subqueue=0",
		"received 1",
		"complete m-1",
		"close receiver",
	}, h.log.snapshot())
}

func TestSettlementMapsToSDKCalls(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		count  uint32
		settle func(ctx context.Context, d *bus.Delivery) error
		call   string
		// deadLetter is the expected reason, description and count
		// property of a DeadLetterMessage call.
		deadLetter *[3]any
	}{
		{name: "complete", count: 1, settle: func(ctx context.Context, d *bus.Delivery) error { return d.Complete(ctx) }, call: "complete m"},
		{name: "abandon", count: 1, settle: func(ctx context.Context, d *bus.Delivery) error { return d.Abandon(ctx, 0) }, call: "abandon m"},
		{
			name: "dead-letter", count: 2,
			settle: func(ctx context.Context, d *bus.Delivery) error {
				return d.DeadLetter(ctx, "InvalidPayload", "amount is negative")
			},
			call:       "dead-letter m",
			deadLetter: &[3]any{"InvalidPayload", "amount is negative", int64(2)},
		},
		{
			name: "abandon on the last allowed delivery dead-letters", count: 3,
			settle:     func(ctx context.Context, d *bus.Delivery) error { return d.Abandon(ctx, 0) },
			call:       "dead-letter m",
			deadLetter: &[3]any{bus.ReasonMaxDeliveries, "abandoned on delivery 3 of 3", int64(3)},
		},
		{
			name: "delayed abandon on the last allowed delivery dead-letters", count: 3,
			settle:     func(ctx context.Context, d *bus.Delivery) error { return d.Abandon(ctx, time.Hour) },
			call:       "dead-letter m",
			deadLetter: &[3]any{bus.ReasonMaxDeliveries, "abandoned on delivery 3 of 3", int64(3)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.subscription(t, "items", "consumer", 3)
			rcv := newFakeReceiver(h.log)
			handler, got := settling(tc.settle)
			stop := h.receiving(t, rcv, bus.ReceiveOptions{}, handler)
			rcv.push(received("m", tc.count))
			require.NoError(t, next(t, got).err)
			require.NoError(t, stop())

			calls := h.log.snapshot()
			require.Equal(t, []string{tc.call, "close receiver"}, calls[len(calls)-2:], "one settlement, then the receiver closes")
			settlements := 0
			for _, c := range calls {
				if strings.HasPrefix(c, "complete") || strings.HasPrefix(c, "abandon") || strings.HasPrefix(c, "dead-letter") {
					settlements++
				}
			}
			require.Equal(t, 1, settlements, "calls: %v", calls)
			if tc.deadLetter == nil {
				return
			}
			opts := rcv.deadLetterOptions()
			require.Len(t, opts, 1)
			require.Equal(t, tc.deadLetter[0], *opts[0].Reason)
			require.Equal(t, tc.deadLetter[1], *opts[0].ErrorDescription)
			require.Equal(t, map[string]any{
				propDeliveryCount:  tc.deadLetter[2],
				propDeadLetteredAt: testNow.Format(time.RFC3339Nano),
			}, opts[0].PropertiesToModify)
		})
	}
}

func TestSettleTwiceAndLockLost(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	errs := make(chan []error, 2)
	handler := func(ctx context.Context, d *bus.Delivery) {
		if d.ID == "twice" {
			errs <- []error{d.Complete(ctx), d.Complete(ctx), d.Abandon(ctx, 0), d.DeadLetter(ctx, "r", "d"), d.RenewLock(ctx)}
			return
		}
		rcv.settleErr = &azservicebus.Error{Code: azservicebus.CodeLockLost}
		errs <- []error{d.Complete(ctx), d.Complete(ctx)}
	}
	h.receiving(t, rcv, bus.ReceiveOptions{}, handler)

	rcv.push(received("twice", 1))
	got := <-errs
	require.NoError(t, got[0])
	for _, err := range got[1:] {
		require.ErrorIs(t, err, bus.ErrSettled)
	}
	require.Equal(t, 1, h.log.count("complete twice"))

	rcv.push(received("lost", 1))
	got = <-errs
	require.ErrorIs(t, got[0], bus.ErrLockLost, "CodeLockLost maps to bus.ErrLockLost")
	require.ErrorIs(t, got[1], bus.ErrSettled, "nothing more can be done with a lost message")
}

func TestUnsettledDeliveryIsAbandoned(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	h.receiving(t, rcv, bus.ReceiveOptions{}, func(context.Context, *bus.Delivery) {})
	rcv.push(received("forgotten", 1))
	h.log.waitCount(t, "abandon forgotten", 1)

	// A handler that panics is treated the same.
	h2 := newHarness(t)
	h2.subscription(t, "items", "consumer", 5)
	rcv2 := newFakeReceiver(h2.log)
	h2.receiving(t, rcv2, bus.ReceiveOptions{}, func(context.Context, *bus.Delivery) { panic("boom") })
	rcv2.push(received("panicked", 1))
	h2.log.waitCount(t, "abandon panicked", 1)
}

func TestReservedDeliveryIsDeadLetteredWithoutHandler(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 3) // broker MaxDeliveryCount 4
	rcv := newFakeReceiver(h.log)
	handler, got := settling(func(ctx context.Context, d *bus.Delivery) error { return d.Complete(ctx) })
	h.receiving(t, rcv, bus.ReceiveOptions{}, handler)

	rcv.push(received("expired", 4), received("fine", 1))
	require.Equal(t, "fine", next(t, got).d.ID, "the handler sees only the next message")
	h.log.waitCount(t, "dead-letter expired", 1)
	opts := rcv.deadLetterOptions()
	require.Len(t, opts, 1)
	require.Equal(t, bus.ReasonMaxDeliveries, *opts[0].Reason)
	require.Equal(t, "lock expired on delivery 3 of 3", *opts[0].ErrorDescription)
	require.Equal(t, int64(3), opts[0].PropertiesToModify[propDeliveryCount])
	require.Empty(t, got)
}

func TestRenewEveryRenewsUntilSettlement(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	proceed := make(chan struct{})
	renewsAtComplete := make(chan int, 1)
	stop := h.receiving(t, rcv, bus.ReceiveOptions{RenewEvery: time.Millisecond}, func(ctx context.Context, d *bus.Delivery) {
		if d.ID == "slow" {
			<-proceed // the handler works until three renewals happened
		}
		err := d.Complete(ctx)
		if d.ID == "slow" {
			renewsAtComplete <- h.log.count("renew slow")
		}
		if err != nil {
			t.Errorf("complete %s: %v", d.ID, err)
		}
	})
	rcv.push(received("slow", 1))
	h.log.waitCount(t, "renew slow", 3)
	close(proceed)
	n := <-renewsAtComplete
	require.GreaterOrEqual(t, n, 3)

	// Settle a second message, so the loop has certainly gone on, then
	// stop: no renewal of the first message came after its Complete.
	rcv.push(received("fast", 1))
	h.log.waitCount(t, "complete fast", 1)
	require.NoError(t, stop())
	calls := h.log.snapshot()
	require.Equal(t, n, h.log.count("renew slow"), "no renewal after settlement")
	last := slices.Index(calls, "complete slow")
	require.NotContains(t, calls[last:], "renew slow")
	require.Equal(t, "close receiver", calls[len(calls)-1])
}

func TestNoRenewalWithoutRenewEvery(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	handler, got := settling(func(ctx context.Context, d *bus.Delivery) error {
		// The handler renews by hand; nothing else does.
		if err := d.RenewLock(ctx); err != nil {
			return err
		}
		return d.Complete(ctx)
	})
	stop := h.receiving(t, rcv, bus.ReceiveOptions{}, handler)
	rcv.push(received("m", 1))
	require.NoError(t, next(t, got).err)
	require.NoError(t, stop())
	require.Equal(t, 1, h.log.count("renew m"))
}

func TestDelayedAbandonHoldsTheLockThenAbandons(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	handler, got := settling(func(ctx context.Context, d *bus.Delivery) error {
		if d.ID == "soon" {
			return d.Abandon(ctx, time.Millisecond)
		}
		return d.Abandon(ctx, time.Hour)
	})
	stop := h.receiving(t, rcv, bus.ReceiveOptions{RenewEvery: time.Millisecond}, handler)

	// A short delay ends in AbandonMessage.
	rcv.push(received("soon", 1))
	require.NoError(t, next(t, got).err)
	h.log.waitCount(t, "abandon soon", 1)

	// A long one keeps the message locked, renewing it, and does not
	// abandon it yet.
	rcv.push(received("later", 1))
	g := next(t, got)
	require.NoError(t, g.err)
	require.ErrorIs(t, g.d.Complete(t.Context()), bus.ErrSettled, "the delivery is settled for the handler")
	h.log.waitCount(t, "renew later", 3)
	require.Zero(t, h.log.count("abandon later"))

	// Stopping Receive abandons the held message at once, before the
	// receiver is closed.
	require.NoError(t, stop())
	calls := h.log.snapshot()
	require.Equal(t, []string{"abandon later", "close receiver"}, calls[len(calls)-2:])
}

func TestShutdownReleasesPrefetchedAndWaitsForHandlers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	started := make(chan string, 4)
	release := make(chan struct{})
	settled := make(chan error, 4)
	stop := h.receiving(t, rcv, bus.ReceiveOptions{Concurrency: 1, Prefetch: 2}, func(ctx context.Context, d *bus.Delivery) {
		started <- d.ID
		<-release
		settled <- d.Complete(ctx)
	})
	rcv.push(received("a", 1), received("b", 1), received("c", 1))
	require.Equal(t, "a", <-started)
	h.log.waitFor(t, "all three taken from the broker", func([]string) bool { return len(rcv.queue) == 0 })

	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	// The prefetched messages go back while the handler is still busy.
	h.log.waitCount(t, "abandon b", 1)
	h.log.waitCount(t, "abandon c", 1)
	select {
	case err := <-stopped:
		require.FailNow(t, "Receive returned while a handler was in flight", "err: %v", err)
	default:
	}
	close(release)
	require.NoError(t, <-settled, "Complete during the drain")
	require.NoError(t, <-stopped)
	calls := h.log.snapshot()
	require.Equal(t, []string{"complete a", "close receiver"}, calls[len(calls)-2:])
	require.Empty(t, started, "no handler got a prefetched message after the stop")
}

func countPrefix(calls []string, prefix string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func TestReceiveAsksForConcurrencyPlusPrefetch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts bus.ReceiveOptions
		want int
	}{
		{bus.ReceiveOptions{}, 2},                            // 1 handler + Prefetch defaulting to Concurrency
		{bus.ReceiveOptions{Concurrency: 4}, 8},              // 4 + 4
		{bus.ReceiveOptions{Concurrency: 2, Prefetch: 3}, 5}, // 2 + 3
		{bus.ReceiveOptions{Concurrency: 4000, Prefetch: 4000}, maxCredits},
	} {
		h := newHarness(t)
		h.subscription(t, "items", "consumer", 5)
		rcv := newFakeReceiver(h.log)
		stop := h.receiving(t, rcv, tc.opts, func(context.Context, *bus.Delivery) {})
		rcv.push(received("m", 1))
		h.log.waitCount(t, "abandon m", 1)
		require.NoError(t, stop())
		require.Equal(t, tc.want, rcv.askedFor()[0], "%+v", tc.opts)
	}
}

func TestPrefetchedMessageWithExpiredLockIsSkipped(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	rcv := newFakeReceiver(h.log)
	handler, got := settling(func(ctx context.Context, d *bus.Delivery) error { return d.Complete(ctx) })
	h.receiving(t, rcv, bus.ReceiveOptions{}, handler)

	stale := received("stale", 1)
	*stale.LockedUntil = testNow // the lock ran out as the handler got free
	rcv.push(stale, received("fresh", 1))
	require.Equal(t, "fresh", next(t, got).d.ID)
	for _, c := range h.log.snapshot() {
		require.NotContains(t, c, "stale", "no SDK call for the stale message")
	}
}

func TestReceiveErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.subscription(t, "items", "consumer", 5)
	noop := func(context.Context, *bus.Delivery) {}

	err := h.b.Receive(t.Context(), "items", "missing", bus.ReceiveOptions{}, noop)
	require.ErrorContains(t, err, "subscription does not exist")
	require.Zero(t, countPrefix(h.log.snapshot(), "new receiver"), "no receiver for a missing subscription")

	rcv := newFakeReceiver(h.log)
	rcv.receiveErr = &azservicebus.Error{Code: azservicebus.CodeUnauthorizedAccess}
	h.client.nextReceiver = rcv
	err = h.b.Receive(t.Context(), "items", "consumer", bus.ReceiveOptions{}, noop)
	require.Error(t, err)
	var sbErr *azservicebus.Error
	require.True(t, errors.As(err, &sbErr))
	require.Equal(t, "close receiver", h.log.snapshot()[len(h.log.snapshot())-1])
}
