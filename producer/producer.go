// Package producer lets a source application announce a work item to the
// pump directly (Phase Next): it builds the item message the pump's
// contract requires (docs/message-contract.md), with the deterministic
// MessageID, and publishes it to the item type's topic on NATS JetStream or
// Azure Service Bus.
//
//	p, err := producer.Open(ctx, producer.Config{NATSURL: "nats://127.0.0.1:4222"})
//	...
//	err = p.Publish(ctx, producer.Item{Shard: "shard1", ItemType: "payment", ItemID: 42, BillerID: "b001"})
//
// Publish the message only after the row's transaction has committed; the
// pump's reconcile sweep covers a publish that is lost.
package producer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/bus/jetstream"
	"github.com/datapump/datapump/internal/bus/servicebus"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
)

// Item names one work item the application has written.
type Item struct {
	// Shard is the name of the shard database, as the pump's configuration names it.
	Shard    string
	ItemType string
	ItemID   int64
	BillerID string
	// CreatedAt is when the row was written (optional).
	CreatedAt time.Time
}

// Message is a built item message: where it goes and what it carries.
type Message struct {
	Topic      string
	ID         string
	Body       []byte
	Properties map[string]string
}

// DefaultTopics maps the built-in item types to their topics.
func DefaultTopics() map[string]string {
	out := map[string]string{}
	for _, t := range items.Builtin() {
		out[t.Name] = t.Topic
	}
	return out
}

// ErrInvalidItem wraps every validation failure of an item.
var ErrInvalidItem = errors.New("invalid item")

// Build validates the item and builds its message; topics maps item types
// to topics (nil: DefaultTopics).
func Build(item Item, topics map[string]string) (Message, error) {
	if topics == nil {
		topics = DefaultTopics()
	}
	topic, ok := topics[item.ItemType]
	if !ok {
		return Message{}, fmt.Errorf("%w: itemType: unknown item type %q", ErrInvalidItem, item.ItemType)
	}
	m := pump.ItemMessage{Shard: item.Shard, ItemType: item.ItemType, ItemID: item.ItemID, BillerID: item.BillerID, Origin: pump.OriginDirect}
	if !item.CreatedAt.IsZero() {
		t := item.CreatedAt.UTC()
		m.CreatedAt = &t
	}
	bm, err := pump.EncodeItemMessage(m, pump.ItemMessageID(item.Shard, item.ItemType, item.ItemID))
	if err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrInvalidItem, err)
	}
	// The consumer's own check: the message must pass the published schema.
	if _, err := pump.DecodeItemMessage(bm.Body); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrInvalidItem, err)
	}
	return Message{Topic: topic, ID: bm.ID, Body: bm.Body, Properties: bm.Properties}, nil
}

// Config connects a producer to the pump's broker: a NATS URL, or a
// Service Bus connection string or namespace (Azure default credential).
type Config struct {
	NATSURL                    string
	ServiceBusConnectionString string
	ServiceBusNamespace        string
	// TopicPrefix as in the pump's bus.topic_prefix.
	TopicPrefix string
	// Topics maps item types to topics (nil: DefaultTopics).
	Topics map[string]string
	Logger *slog.Logger
}

// Producer publishes item messages.
type Producer struct {
	bus    bus.Bus
	topics map[string]string
}

// Open connects to the broker.
func Open(ctx context.Context, cfg Config) (*Producer, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var b bus.Bus
	var err error
	switch {
	case cfg.NATSURL != "":
		b, err = jetstream.Open(ctx, jetstream.Config{URL: cfg.NATSURL, Logger: logger, ConnectName: "datapump-producer"})
	case cfg.ServiceBusConnectionString != "" || cfg.ServiceBusNamespace != "":
		b, err = servicebus.Open(ctx, servicebus.Config{ConnectionString: cfg.ServiceBusConnectionString, Namespace: cfg.ServiceBusNamespace, Logger: logger})
	default:
		return nil, errors.New("producer: give a NATS URL or a Service Bus connection string or namespace")
	}
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	return NewWithBus(bus.WithTopicPrefix(b, cfg.TopicPrefix), cfg.Topics), nil
}

// NewWithBus returns a producer over an open bus of this module (the
// pump's own commands use it).
func NewWithBus(b bus.Bus, topics map[string]string) *Producer {
	if topics == nil {
		topics = DefaultTopics()
	}
	return &Producer{bus: b, topics: topics}
}

// Publish validates and publishes the items; it returns once the broker
// has stored them. Nothing is published if any item is invalid.
func (p *Producer) Publish(ctx context.Context, its ...Item) error {
	byTopic := map[string][]bus.Message{}
	var order []string
	for _, it := range its {
		m, err := Build(it, p.topics)
		if err != nil {
			return err
		}
		if _, seen := byTopic[m.Topic]; !seen {
			order = append(order, m.Topic)
		}
		byTopic[m.Topic] = append(byTopic[m.Topic], bus.Message{ID: m.ID, Body: m.Body, Properties: m.Properties})
	}
	for _, topic := range order {
		if _, err := p.bus.Publish(ctx, topic, byTopic[topic]...); err != nil {
			return fmt.Errorf("publish to %s: %w", topic, err)
		}
	}
	return nil
}

// Close closes the connection.
func (p *Producer) Close() error { return p.bus.Close() }
