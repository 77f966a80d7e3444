package bustest

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

// suite carries what every subtest needs.
type suite struct {
	ctx    context.Context
	f      Features
	newBus func(t *testing.T) bus.Bus
}

// env is one subtest's bus with a fresh topic and one subscription on it.
type env struct {
	t     *testing.T
	s     *suite
	b     bus.Bus
	topic string
	sub   bus.SubscriptionSpec
}

// setup builds a bus, a topic and a subscription with the base lock duration
// and 10 deliveries; adjust changes the subscription before it is ensured.
func (s *suite) setup(t *testing.T, adjust func(*bus.SubscriptionSpec)) *env {
	t.Helper()
	b := s.newBus(t)
	topic := NewTestID()
	s.ensureTopic(t, b, bus.TopicSpec{Name: topic, DuplicateWindow: time.Minute})
	spec := bus.SubscriptionSpec{Topic: topic, Name: NewTestID(), LockDuration: s.f.lock(), MaxDeliveries: 10}
	if adjust != nil {
		adjust(&spec)
	}
	s.ensureSubscription(t, b, spec)
	return &env{t: t, s: s, b: b, topic: topic, sub: spec}
}

// addSubscription ensures another subscription on the env's topic.
func (e *env) addSubscription() bus.SubscriptionSpec {
	e.t.Helper()
	spec := e.sub
	spec.Name = NewTestID()
	e.s.ensureSubscription(e.t, e.b, spec)
	return spec
}

// ensureTopic ensures the topic, requires success and a valid Change, and
// returns the Change.
func (s *suite) ensureTopic(t *testing.T, b bus.Bus, spec bus.TopicSpec) bus.Change {
	t.Helper()
	change, err := b.EnsureTopic(s.ctx, spec)
	require.NoError(t, err, "EnsureTopic %+v", spec)
	require.Contains(t, []bus.Change{bus.ChangeCreated, bus.ChangeUpdated, bus.ChangeUnchanged}, change, "EnsureTopic %+v", spec)
	return change
}

// ensureSubscription is ensureTopic for a subscription.
func (s *suite) ensureSubscription(t *testing.T, b bus.Bus, spec bus.SubscriptionSpec) bus.Change {
	t.Helper()
	change, err := b.EnsureSubscription(s.ctx, spec)
	require.NoError(t, err, "EnsureSubscription %+v", spec)
	require.Contains(t, []bus.Change{bus.ChangeCreated, bus.ChangeUpdated, bus.ChangeUnchanged}, change, "EnsureSubscription %+v", spec)
	return change
}

func (e *env) publish(msgs ...bus.Message) bus.PublishResult {
	e.t.Helper()
	res, err := e.b.Publish(e.s.ctx, e.topic, msgs...)
	require.NoError(e.t, err)
	return res
}

// receiver is a Receive loop running in the background.
type receiver struct {
	t       *testing.T
	cancel  context.CancelFunc
	done    chan error
	timeout time.Duration
}

// receive starts Receive on the subscription; the loop is stopped at cleanup
// if the test does not stop it.
func (e *env) receive(subscription string, opts bus.ReceiveOptions, h bus.Handler) *receiver {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.s.ctx)
	r := &receiver{t: e.t, cancel: cancel, done: make(chan error, 1), timeout: e.s.f.timeout()}
	go func() {
		err := e.b.Receive(ctx, e.topic, subscription, opts, h)
		if ctx.Err() == nil {
			e.t.Errorf("Receive on %s returned before it was stopped: %v", subscription, err)
		}
		r.done <- err
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(r.timeout):
			e.t.Errorf("Receive did not return within %s of cleanup", r.timeout)
		}
	})
	return r
}

// stop cancels the loop and requires it to return nil.
func (r *receiver) stop() {
	r.t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			require.NoError(r.t, err, "Receive after cancel")
			close(r.done)
		}
	case <-time.After(r.timeout):
		require.FailNow(r.t, "Receive did not return after its context was cancelled")
	}
}

// waitFor receives one value from ch or fails after timeout.
func waitFor[T any](t *testing.T, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		require.FailNow(t, "timed out waiting for "+what)
		panic("unreachable")
	}
}

// quiet requires that nothing arrives on ch for d (used only to show a
// redelivery does not happen).
func quiet[T any](t *testing.T, ch <-chan T, d time.Duration, what string) {
	t.Helper()
	select {
	case v := <-ch:
		require.FailNow(t, fmt.Sprintf("unexpected %s: %+v", what, v))
	case <-time.After(d):
	}
}

// deadLetters polls DeadLetters until it returns at least n entries.
func (e *env) deadLetters(subscription string, n int, within time.Duration) []bus.DeadLetter {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		dls, err := e.b.DeadLetters(e.s.ctx, e.topic, subscription, 100)
		require.NoError(e.t, err)
		if len(dls) >= n {
			return dls
		}
		if time.Now().After(deadline) {
			require.FailNow(e.t, fmt.Sprintf("timed out waiting for %d dead letters, have %d", n, len(dls)))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// got is what a handler saw of a delivery, copied for the test goroutine.
type got struct {
	ID            string
	Body          string
	Properties    map[string]string
	Topic         string
	Subscription  string
	DeliveryCount int
	EnqueuedAt    time.Time
	SettleErr     error
}

func snapshot(d *bus.Delivery) got {
	return got{
		ID:            d.ID,
		Body:          string(d.Body),
		Properties:    maps.Clone(d.Properties),
		Topic:         d.Topic,
		Subscription:  d.Subscription,
		DeliveryCount: d.DeliveryCount,
		EnqueuedAt:    d.EnqueuedAt,
	}
}

// completing returns a handler that completes every delivery and reports it
// on the returned channel.
func completing(buffer int) (bus.Handler, <-chan got) {
	ch := make(chan got, buffer)
	return func(ctx context.Context, d *bus.Delivery) {
		g := snapshot(d)
		g.SettleErr = d.Complete(ctx)
		ch <- g
	}, ch
}

// counter counts deliveries by MessageID.
type counter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (c *counter) add(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]int{}
	}
	c.counts[id]++
	return len(c.counts)
}

func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.counts)
}

// testMessage builds a message with properties that exercise round-tripping.
func testMessage(id string) bus.Message {
	return bus.Message{
		ID:   id,
		Body: []byte(`{"item":"` + id + `","amount":12.50}`),
		Properties: map[string]string{
			"item_type":      "payment",
			"biller":         "biller-42",
			"traceparent":    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"schema_version": "1",
			"Mixed-Case":     "Zoë & co = 100%;\tinner tab",
			"empty":          "",
		},
	}
}
