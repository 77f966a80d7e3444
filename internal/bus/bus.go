// Package bus is the port to the message broker: topics, subscriptions with
// peek-lock delivery, lock renewal, dead-lettering and duplicate detection
// by MessageID.
//
// Adapters live in sub-packages (jetstream, later servicebus) and must all
// pass the conformance suite in bustest.
package bus

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors.
var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("bus closed")
	// ErrSettled is returned when a delivery is settled twice.
	ErrSettled = errors.New("delivery already settled")
	// ErrLockLost means the broker no longer holds the message for us.
	// Adapters that settle by stream sequence (JetStream) may never return it.
	ErrLockLost = errors.New("message lock lost")
)

// Message is what is published. ID is the MessageID the broker uses to drop
// duplicates within its window; Properties are application properties
// (item type, biller, traceparent, schema version).
type Message struct {
	ID         string
	Body       []byte
	Properties map[string]string
}

// TopicSpec describes a topic to provision.
type TopicSpec struct {
	Name string
	// DuplicateWindow is how long the broker remembers MessageIDs.
	DuplicateWindow time.Duration
}

// SubscriptionSpec describes a subscription (a durable consumer) on a topic.
type SubscriptionSpec struct {
	Topic string
	Name  string
	// LockDuration is how long a delivered message stays locked to one
	// receiver before it is redelivered, unless the lock is renewed.
	LockDuration time.Duration
	// MaxDeliveries: a message delivered this many times without being
	// completed is dead-lettered with reason MaxDeliveryCountExceeded.
	MaxDeliveries int
}

// ReceiveOptions tunes a receive loop.
type ReceiveOptions struct {
	// Concurrency is the number of messages handled at once (default 1).
	Concurrency int
	// Prefetch is how many messages to pull ahead of the handlers (default Concurrency).
	Prefetch int
	// RenewEvery, when set, renews the lock of every in-flight message at
	// this interval until it is settled.
	RenewEvery time.Duration
}

// Dead-letter reasons set by adapters.
const (
	ReasonMaxDeliveries = "MaxDeliveryCountExceeded"
)

// Delivery is one received message, locked to this receiver until settled.
// Exactly one of Complete, Abandon or DeadLetter settles it.
type Delivery struct {
	Message
	Topic        string
	Subscription string
	// DeliveryCount is 1 on the first delivery.
	DeliveryCount int
	// EnqueuedAt is when the broker stored the message.
	EnqueuedAt time.Time

	settler Settler
}

// Settler is what an adapter implements to settle one delivery.
type Settler interface {
	Complete(ctx context.Context) error
	Abandon(ctx context.Context, delay time.Duration) error
	DeadLetter(ctx context.Context, reason, description string) error
	RenewLock(ctx context.Context) error
}

// NewDelivery is used by adapters to build a Delivery.
func NewDelivery(m Message, topic, subscription string, deliveryCount int, enqueuedAt time.Time, s Settler) *Delivery {
	return &Delivery{Message: m, Topic: topic, Subscription: subscription, DeliveryCount: deliveryCount, EnqueuedAt: enqueuedAt, settler: s}
}

// Complete removes the message from the subscription. An adapter may
// return before the broker has recorded it (JetStream does); a completion
// lost on a dropped connection means one more delivery, so a handler must
// (as the pump's do, through the control record) find a redelivered
// message's work already done.
func (d *Delivery) Complete(ctx context.Context) error { return d.settler.Complete(ctx) }

// Abandon releases the message for redelivery after delay (zero: at once).
// When the message has reached its subscription's MaxDeliveries the adapter
// dead-letters it with ReasonMaxDeliveries instead.
func (d *Delivery) Abandon(ctx context.Context, delay time.Duration) error {
	return d.settler.Abandon(ctx, delay)
}

// DeadLetter moves the message to the subscription's dead-letter queue with
// a reason and description, which DeadLetters reads back.
func (d *Delivery) DeadLetter(ctx context.Context, reason, description string) error {
	return d.settler.DeadLetter(ctx, reason, description)
}

// RenewLock extends the lock by the subscription's lock duration.
func (d *Delivery) RenewLock(ctx context.Context) error { return d.settler.RenewLock(ctx) }

// Handler handles one delivery and must settle it. If it returns without
// settling, the receive loop abandons the message.
type Handler func(ctx context.Context, d *Delivery)

// DeadLetter is a dead-lettered message read back with its reason.
type DeadLetter struct {
	Message
	Topic        string
	Subscription string
	Reason       string
	Description  string
	// DeliveryCount is how many times it was delivered before dead-lettering.
	DeliveryCount  int
	DeadLetteredAt time.Time
}

// Change says what an Ensure call did.
type Change string

// What an Ensure call did: created what was missing, updated settings that
// differed from the spec, or found everything as specified and left it.
const (
	ChangeCreated   Change = "created"
	ChangeUpdated   Change = "updated"
	ChangeUnchanged Change = "unchanged"
)

// Bus is a message broker.
type Bus interface {
	// EnsureTopic creates the topic if missing, or updates it to spec;
	// idempotent. It reports what it did; a topic already as specified is
	// ChangeUnchanged and is not written to.
	EnsureTopic(ctx context.Context, spec TopicSpec) (Change, error)
	// EnsureSubscription creates the subscription if missing, or updates
	// it; idempotent. It reports what it did like EnsureTopic.
	EnsureSubscription(ctx context.Context, spec SubscriptionSpec) (Change, error)
	// Publish sends the messages to the topic and returns once the broker
	// has acknowledged all of them. Messages whose ID the broker has seen
	// within the duplicate window are dropped; Publish reports how many were
	// dropped so.
	Publish(ctx context.Context, topic string, msgs ...Message) (PublishResult, error)
	// Receive delivers messages of the subscription to h until ctx is
	// cancelled; then it stops taking messages, waits for the in-flight
	// handlers to return, and returns nil. The handlers' context is not
	// cancelled with ctx, so in-flight work can finish and settle.
	Receive(ctx context.Context, topic, subscription string, opts ReceiveOptions, h Handler) error
	// DeadLetters reads (without removing) up to max dead-lettered messages
	// of a subscription, oldest first.
	DeadLetters(ctx context.Context, topic, subscription string, max int) ([]DeadLetter, error)
	// Ping checks the broker is reachable.
	Ping(ctx context.Context) error
	// Close releases the connection (and stops an embedded server).
	Close() error
}

// PublishResult counts what the broker did with a publish: Published
// messages were stored, Duplicates were dropped as already seen; the two add
// up to the number of messages passed.
type PublishResult struct {
	Published  int
	Duplicates int
}
