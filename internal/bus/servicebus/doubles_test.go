package servicebus

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

// Recording test doubles of the narrow SDK interfaces. They record what
// the adapter asked the SDK to do; they are not a broker.

// callLog is an ordered record of SDK calls shared by a test's doubles.
type callLog struct {
	mu      sync.Mutex
	calls   []string
	changed chan struct{} // signalled (non-blocking) after every call
}

func newCallLog() *callLog { return &callLog{changed: make(chan struct{}, 1)} }

func (l *callLog) add(format string, args ...any) {
	l.mu.Lock()
	l.calls = append(l.calls, fmt.Sprintf(format, args...))
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

func (l *callLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

func (l *callLog) count(call string) int {
	n := 0
	for _, c := range l.snapshot() {
		if c == call {
			n++
		}
	}
	return n
}

// waitFor waits until cond holds on the log (checked after every call),
// failing the test after a generous bound.
func (l *callLog) waitFor(t *testing.T, what string, cond func(calls []string) bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if cond(l.snapshot()) {
			return
		}
		select {
		case <-l.changed:
		case <-deadline:
			require.FailNow(t, "timed out waiting for "+what, "calls: %v", l.snapshot())
		}
	}
}

// waitCount waits until call has been made at least n times.
func (l *callLog) waitCount(t *testing.T, call string, n int) {
	t.Helper()
	l.waitFor(t, fmt.Sprintf("%d × %s", n, call), func(calls []string) bool {
		k := 0
		for _, c := range calls {
			if c == call {
				k++
			}
		}
		return k >= n
	})
}

// fakeClient is a connector handing out recording senders and receivers.
type fakeClient struct {
	log       *callLog
	batchSize int // messages per batch (0: unlimited)

	mu        sync.Mutex
	senders   map[string]*fakeSender
	receivers []*fakeReceiver
	// nextReceiver, when set, is returned by the next NewReceiver.
	nextReceiver *fakeReceiver
}

func (c *fakeClient) NewSender(topic string) (sender, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log.add("new sender %s", topic)
	if c.senders == nil {
		c.senders = map[string]*fakeSender{}
	}
	s := &fakeSender{log: c.log, topic: topic, batchSize: c.batchSize}
	c.senders[topic] = s
	return s, nil
}

func (c *fakeClient) NewReceiver(topic, subscription string, opts *azservicebus.ReceiverOptions) (receiver, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log.add("new receiver %s/%s mode=%v subqueue=%v", topic, subscription, opts.ReceiveMode, opts.SubQueue)
	r := c.nextReceiver
	if r == nil {
		r = newFakeReceiver(c.log)
	}
	c.nextReceiver = nil
	c.receivers = append(c.receivers, r)
	return r, nil
}

func (c *fakeClient) Close(context.Context) error {
	c.log.add("close client")
	return nil
}

func (c *fakeClient) sender(topic string) *fakeSender {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.senders[topic]
}

// fakeBatch holds up to size messages; a message whose body is longer
// than tooLarge does not fit in any batch.
type fakeBatch struct {
	size int
	msgs []*azservicebus.Message
}

const tooLarge = 1000

func (b *fakeBatch) AddMessage(m *azservicebus.Message, _ *azservicebus.AddMessageOptions) error {
	if len(m.Body) > tooLarge || (b.size > 0 && len(b.msgs) == b.size) {
		return azservicebus.ErrMessageTooLarge
	}
	b.msgs = append(b.msgs, m)
	return nil
}

func (b *fakeBatch) NumMessages() int32 { return int32(len(b.msgs)) }

// fakeSender records the batches it sends.
type fakeSender struct {
	log       *callLog
	topic     string
	batchSize int
	// failSend makes the n-th SendMessageBatch (1-based) fail.
	failSend int

	mu    sync.Mutex
	sends int
	sent  [][]*azservicebus.Message
}

func (s *fakeSender) NewMessageBatch(context.Context, *azservicebus.MessageBatchOptions) (messageBatch, error) {
	s.log.add("new batch %s", s.topic)
	return &fakeBatch{size: s.batchSize}, nil
}

func (s *fakeSender) SendMessageBatch(_ context.Context, b messageBatch, _ *azservicebus.SendMessageBatchOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sends++
	fb := b.(*fakeBatch)
	s.log.add("send batch %s (%d)", s.topic, len(fb.msgs))
	if s.sends == s.failSend {
		return &azservicebus.Error{Code: azservicebus.CodeConnectionLost}
	}
	s.sent = append(s.sent, fb.msgs)
	return nil
}

func (s *fakeSender) Close(context.Context) error {
	s.log.add("close sender %s", s.topic)
	return nil
}

func (s *fakeSender) batches() [][]*azservicebus.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sent)
}

// fakeReceiver hands out the messages pushed into it and records every
// settlement, renewal and peek.
type fakeReceiver struct {
	log   *callLog
	queue chan *azservicebus.ReceivedMessage
	// receiveErr, when set, is returned by ReceiveMessages.
	receiveErr error
	// settleErr, when set, is returned by every settlement.
	settleErr error
	// peek is the dead-letter queue PeekMessages reads, by sequence number.
	peek []*azservicebus.ReceivedMessage

	mu          sync.Mutex
	asked       []int
	deadLetters []*azservicebus.DeadLetterOptions
}

func newFakeReceiver(log *callLog) *fakeReceiver {
	return &fakeReceiver{log: log, queue: make(chan *azservicebus.ReceivedMessage, 100)}
}

// push makes messages available to ReceiveMessages.
func (r *fakeReceiver) push(msgs ...*azservicebus.ReceivedMessage) {
	for _, m := range msgs {
		r.queue <- m
	}
}

// ReceiveMessages blocks for the first message like the SDK, then takes
// what else is there, up to maxMessages.
func (r *fakeReceiver) ReceiveMessages(ctx context.Context, maxMessages int, _ *azservicebus.ReceiveMessagesOptions) ([]*azservicebus.ReceivedMessage, error) {
	r.mu.Lock()
	r.asked = append(r.asked, maxMessages)
	r.mu.Unlock()
	if r.receiveErr != nil {
		return nil, r.receiveErr
	}
	var out []*azservicebus.ReceivedMessage
	select {
	case m := <-r.queue:
		out = append(out, m)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(out) < maxMessages {
		select {
		case m := <-r.queue:
			out = append(out, m)
		default:
			r.log.add("received %d", len(out))
			return out, nil
		}
	}
	r.log.add("received %d", len(out))
	return out, nil
}

func (r *fakeReceiver) PeekMessages(_ context.Context, maxMessages int, opts *azservicebus.PeekMessagesOptions) ([]*azservicebus.ReceivedMessage, error) {
	from := deref(opts.FromSequenceNumber)
	r.log.add("peek %d from %d", maxMessages, from)
	var out []*azservicebus.ReceivedMessage
	for _, m := range r.peek {
		if *m.SequenceNumber >= from && len(out) < maxMessages {
			out = append(out, m)
		}
	}
	return out, nil
}

func (r *fakeReceiver) CompleteMessage(_ context.Context, m *azservicebus.ReceivedMessage, _ *azservicebus.CompleteMessageOptions) error {
	r.log.add("complete %s", m.MessageID)
	return r.settleErr
}

func (r *fakeReceiver) AbandonMessage(_ context.Context, m *azservicebus.ReceivedMessage, opts *azservicebus.AbandonMessageOptions) error {
	r.log.add("abandon %s", m.MessageID)
	if opts != nil && opts.PropertiesToModify != nil {
		return fmt.Errorf("unexpected properties to modify %v", opts.PropertiesToModify)
	}
	return r.settleErr
}

func (r *fakeReceiver) DeadLetterMessage(_ context.Context, m *azservicebus.ReceivedMessage, opts *azservicebus.DeadLetterOptions) error {
	r.mu.Lock()
	r.deadLetters = append(r.deadLetters, opts)
	r.mu.Unlock()
	r.log.add("dead-letter %s", m.MessageID)
	return r.settleErr
}

func (r *fakeReceiver) RenewMessageLock(_ context.Context, m *azservicebus.ReceivedMessage, _ *azservicebus.RenewMessageLockOptions) error {
	r.log.add("renew %s", m.MessageID)
	return nil
}

func (r *fakeReceiver) Close(context.Context) error {
	r.log.add("close receiver")
	return nil
}

func (r *fakeReceiver) deadLetterOptions() []*azservicebus.DeadLetterOptions {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.deadLetters)
}

func (r *fakeReceiver) askedFor() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.asked)
}

// fakeAdmin records management calls and answers from its maps.
type fakeAdmin struct {
	log *callLog

	mu     sync.Mutex
	topics map[string]admin.TopicProperties
	subs   map[string]admin.SubscriptionProperties // by "topic/sub"
	// createConflict makes the next create answer 409 after storing
	// conflictWith (another process won the race).
	createConflict bool
	conflictTopic  *admin.TopicProperties
	pingErr        error

	created []any // the options of every create and update, in order
}

func newFakeAdmin(log *callLog) *fakeAdmin {
	return &fakeAdmin{log: log, topics: map[string]admin.TopicProperties{}, subs: map[string]admin.SubscriptionProperties{}}
}

func statusError(code int) error {
	return &azcore.ResponseError{StatusCode: code, ErrorCode: fmt.Sprint(code)}
}

func (a *fakeAdmin) GetNamespaceProperties(context.Context, *admin.GetNamespacePropertiesOptions) (admin.GetNamespacePropertiesResponse, error) {
	a.log.add("get namespace")
	return admin.GetNamespacePropertiesResponse{}, a.pingErr
}

func (a *fakeAdmin) GetTopic(_ context.Context, topic string, _ *admin.GetTopicOptions) (*admin.GetTopicResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.add("get topic %s", topic)
	p, ok := a.topics[topic]
	if !ok {
		return nil, nil
	}
	return &admin.GetTopicResponse{TopicName: topic, TopicProperties: p}, nil
}

func (a *fakeAdmin) CreateTopic(_ context.Context, topic string, opts *admin.CreateTopicOptions) (admin.CreateTopicResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.add("create topic %s", topic)
	a.created = append(a.created, *opts.Properties)
	if a.createConflict {
		a.createConflict = false
		a.topics[topic] = *a.conflictTopic
		return admin.CreateTopicResponse{}, statusError(409)
	}
	a.topics[topic] = *opts.Properties
	return admin.CreateTopicResponse{TopicName: topic, TopicProperties: *opts.Properties}, nil
}

func (a *fakeAdmin) UpdateTopic(_ context.Context, topic string, props admin.TopicProperties, _ *admin.UpdateTopicOptions) (admin.UpdateTopicResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.add("update topic %s", topic)
	a.created = append(a.created, props)
	a.topics[topic] = props
	return admin.UpdateTopicResponse{TopicName: topic, TopicProperties: props}, nil
}

func (a *fakeAdmin) DeleteTopic(_ context.Context, topic string, _ *admin.DeleteTopicOptions) (admin.DeleteTopicResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.add("delete topic %s", topic)
	delete(a.topics, topic)
	return admin.DeleteTopicResponse{}, nil
}

func (a *fakeAdmin) GetSubscription(_ context.Context, topic, sub string, _ *admin.GetSubscriptionOptions) (*admin.GetSubscriptionResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.add("get subscription %s/%s", topic, sub)
	p, ok := a.subs[topic+"/"+sub]
	if !ok {
		return nil, nil
	}
	return &admin.GetSubscriptionResponse{TopicName: topic, SubscriptionName: sub, SubscriptionProperties: p}, nil
}

func (a *fakeAdmin) CreateSubscription(_ context.Context, topic, sub string, opts *admin.CreateSubscriptionOptions) (admin.CreateSubscriptionResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.add("create subscription %s/%s", topic, sub)
	a.created = append(a.created, *opts.Properties)
	if _, ok := a.topics[topic]; !ok {
		return admin.CreateSubscriptionResponse{}, statusError(404)
	}
	a.subs[topic+"/"+sub] = *opts.Properties
	return admin.CreateSubscriptionResponse{TopicName: topic, SubscriptionName: sub, SubscriptionProperties: *opts.Properties}, nil
}

func (a *fakeAdmin) UpdateSubscription(_ context.Context, topic, sub string, props admin.SubscriptionProperties, _ *admin.UpdateSubscriptionOptions) (admin.UpdateSubscriptionResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.log.add("update subscription %s/%s", topic, sub)
	a.created = append(a.created, props)
	a.subs[topic+"/"+sub] = props
	return admin.UpdateSubscriptionResponse{TopicName: topic, SubscriptionName: sub, SubscriptionProperties: props}, nil
}

func (a *fakeAdmin) requests() []any {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.created)
}

// harness is a Bus on recording doubles with a fixed clock.
type harness struct {
	b      *Bus
	log    *callLog
	client *fakeClient
	admin  *fakeAdmin
	now    time.Time
}

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newHarness(t *testing.T) *harness {
	t.Helper()
	log := newCallLog()
	h := &harness{log: log, client: &fakeClient{log: log}, admin: newFakeAdmin(log), now: testNow}
	h.b = newBus(slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})), h.client, h.admin)
	h.b.now = func() time.Time { return h.now }
	t.Cleanup(func() { require.NoError(t, h.b.Close()) })
	return h
}

// subscription provisions a subscription in the fake admin as
// EnsureSubscription would (so Receive finds it).
func (h *harness) subscription(t *testing.T, topic, sub string, maxDeliveries int) {
	t.Helper()
	h.admin.topics[topic] = admin.TopicProperties{RequiresDuplicateDetection: ptr(true)}
	h.admin.subs[topic+"/"+sub] = subscriptionSettings{lock: time.Minute, maxDeliveries: maxDeliveries}.properties()
}

// receiving runs Receive in the background with the given receiver;
// stop cancels it and returns its error.
func (h *harness) receiving(t *testing.T, rcv *fakeReceiver, opts bus.ReceiveOptions, handler bus.Handler) (stop func() error) {
	t.Helper()
	h.client.mu.Lock()
	h.client.nextReceiver = rcv
	h.client.mu.Unlock()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- h.b.Receive(ctx, "items", "consumer", opts, handler)
	}()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = fmt.Errorf("receive did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// received builds a message as the SDK delivers it.
func received(id string, deliveryCount uint32) *azservicebus.ReceivedMessage {
	enq := testNow.Add(-time.Minute)
	locked := testNow.Add(time.Minute)
	return &azservicebus.ReceivedMessage{
		MessageID:     id,
		Body:          []byte("body of " + id),
		DeliveryCount: deliveryCount,
		EnqueuedTime:  &enq,
		LockedUntil:   &locked,
		ApplicationProperties: map[string]any{
			"itemType":         "payment",
			"billerId":         "b-7",
			"traceparent":      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"DeadLetterReason": "leftover from the broker",
			"Datapump-Other":   "adapter's own",
		},
	}
}
