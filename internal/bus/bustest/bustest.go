// Package bustest is the conformance suite for bus.Bus. Every adapter's test
// calls Exercise with a constructor; the suite decides what is tested, so the
// adapters cannot drift apart.
//
// Every subtest runs in parallel on fresh topic and subscription names
// (NewTestID) and provisions them with EnsureTopic and EnsureSubscription
// before it publishes. Waits are bounded by timeouts for an event; nothing
// asserts on elapsed wall time.
package bustest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/datapump/datapump/internal/bus"
)

// Features declares what the broker behind an adapter can do, so the suite
// can adapt its parameters. The zero value asks for everything.
type Features struct {
	// MinLockDuration is the shortest lock duration the broker supports. The
	// suite uses max(MinLockDuration, 1s) as its base lock duration.
	MinLockDuration time.Duration
	// UncountedDuplicates is set when the broker drops duplicate MessageIDs
	// but cannot tell the publisher how many it dropped, so
	// PublishResult.Duplicates is always zero (Azure Service Bus). The suite
	// still checks that the subscriber receives one copy.
	UncountedDuplicates bool
	// FixedDuplicateWindow is set when the broker cannot change a topic's
	// duplicate window after creation. The suite then does not change one
	// and does not ask EnsureTopic for bus.ChangeUpdated.
	FixedDuplicateWindow bool
	// EventTimeout bounds every wait for an event (a delivery, a dead letter,
	// Receive returning) on top of the lock durations involved. Zero means
	// 30 seconds.
	EventTimeout time.Duration
}

func (f Features) lock() time.Duration {
	return max(f.MinLockDuration, time.Second)
}

func (f Features) timeout() time.Duration {
	if f.EventTimeout > 0 {
		return f.EventTimeout
	}
	return 30 * time.Second
}

// NewTestID returns a unique name for a topic or subscription, valid for
// every adapter (lowercase letters, digits and hyphens, 24 characters).
func NewTestID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return "bustest-" + hex.EncodeToString(b[:])
}

// Exercise runs the conformance suite against the adapter built by newBus.
// newBus is called once per subtest and must return a ready bus; it should
// register its own cleanup (Close, and deleting what the test created on a
// shared broker) with t.Cleanup. Close must be idempotent: the suite closes
// some buses itself.
func Exercise(ctx context.Context, t *testing.T, f Features, newBus func(t *testing.T) bus.Bus) {
	t.Helper()
	s := &suite{ctx: ctx, f: f, newBus: newBus}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"EnsureIsIdempotent", s.testEnsureIsIdempotent},
		{"EnsureReportsChanges", s.testEnsureReportsChanges},
		{"Ping", s.testPing},
		{"RoundTrip", s.testRoundTrip},
		{"DuplicateMessageIDsAreDropped", s.testDuplicates},
		{"EverySubscriptionGetsEveryMessage", s.testTwoSubscriptions},
		{"AbandonWithDelayRedelivers", s.testAbandonWithDelay},
		{"UnsettledMessageIsAbandoned", s.testUnsettledIsAbandoned},
		{"RenewLockKeepsSlowMessage", s.testRenewLock},
		{"RenewEveryKeepsSlowMessage", s.testRenewEvery},
		{"AbandonPastMaxDeliveriesDeadLetters", s.testAbandonPastMaxDeliveries},
		{"HandlerDeadLetter", s.testHandlerDeadLetter},
		{"LockExpiryOnLastDeliveryDeadLetters", s.testLockExpiryOnLastDelivery},
		{"DeadLettersEmpty", s.testDeadLettersEmpty},
		{"SettleTwice", s.testSettleTwice},
		{"GracefulDrain", s.testGracefulDrain},
		{"Concurrency", s.testConcurrency},
		{"ManyMessagesExactlyOnce", s.testManyMessages},
		{"ReceiveUnknownSubscription", s.testReceiveUnknownSubscription},
		{"Closed", s.testClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t)
		})
	}
}
