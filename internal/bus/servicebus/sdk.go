package servicebus

import (
	"context"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
)

// The adapter reaches the SDK only through these narrow interfaces, so
// its tests can record every call with doubles. The SDK's own types
// (*azservicebus.Receiver, *admin.Client) satisfy receiver and
// administrator as they are; the sender and the client need a thin
// wrapper because a *azservicebus.MessageBatch cannot be built outside
// the SDK.

// connector makes senders and receivers (an *azservicebus.Client).
type connector interface {
	NewSender(topic string) (sender, error)
	NewReceiver(topic, subscription string, opts *azservicebus.ReceiverOptions) (receiver, error)
	Close(ctx context.Context) error
}

// messageBatch is a batch being filled (an *azservicebus.MessageBatch).
type messageBatch interface {
	AddMessage(m *azservicebus.Message, opts *azservicebus.AddMessageOptions) error
	NumMessages() int32
}

// sender sends to one topic (an *azservicebus.Sender).
type sender interface {
	NewMessageBatch(ctx context.Context, opts *azservicebus.MessageBatchOptions) (messageBatch, error)
	SendMessageBatch(ctx context.Context, batch messageBatch, opts *azservicebus.SendMessageBatchOptions) error
	Close(ctx context.Context) error
}

// receiver receives from one subscription or its dead-letter queue (an
// *azservicebus.Receiver).
type receiver interface {
	ReceiveMessages(ctx context.Context, maxMessages int, opts *azservicebus.ReceiveMessagesOptions) ([]*azservicebus.ReceivedMessage, error)
	PeekMessages(ctx context.Context, maxMessages int, opts *azservicebus.PeekMessagesOptions) ([]*azservicebus.ReceivedMessage, error)
	CompleteMessage(ctx context.Context, m *azservicebus.ReceivedMessage, opts *azservicebus.CompleteMessageOptions) error
	AbandonMessage(ctx context.Context, m *azservicebus.ReceivedMessage, opts *azservicebus.AbandonMessageOptions) error
	DeadLetterMessage(ctx context.Context, m *azservicebus.ReceivedMessage, opts *azservicebus.DeadLetterOptions) error
	RenewMessageLock(ctx context.Context, m *azservicebus.ReceivedMessage, opts *azservicebus.RenewMessageLockOptions) error
	Close(ctx context.Context) error
}

// administrator provisions and inspects entities (an *admin.Client).
type administrator interface {
	GetNamespaceProperties(ctx context.Context, opts *admin.GetNamespacePropertiesOptions) (admin.GetNamespacePropertiesResponse, error)
	GetTopic(ctx context.Context, topic string, opts *admin.GetTopicOptions) (*admin.GetTopicResponse, error)
	CreateTopic(ctx context.Context, topic string, opts *admin.CreateTopicOptions) (admin.CreateTopicResponse, error)
	UpdateTopic(ctx context.Context, topic string, props admin.TopicProperties, opts *admin.UpdateTopicOptions) (admin.UpdateTopicResponse, error)
	DeleteTopic(ctx context.Context, topic string, opts *admin.DeleteTopicOptions) (admin.DeleteTopicResponse, error)
	GetSubscription(ctx context.Context, topic, subscription string, opts *admin.GetSubscriptionOptions) (*admin.GetSubscriptionResponse, error)
	CreateSubscription(ctx context.Context, topic, subscription string, opts *admin.CreateSubscriptionOptions) (admin.CreateSubscriptionResponse, error)
	UpdateSubscription(ctx context.Context, topic, subscription string, props admin.SubscriptionProperties, opts *admin.UpdateSubscriptionOptions) (admin.UpdateSubscriptionResponse, error)
}

var (
	_ receiver      = (*azservicebus.Receiver)(nil)
	_ administrator = (*admin.Client)(nil)
	_ messageBatch  = (*azservicebus.MessageBatch)(nil)
)

// sdkClient is the connector of an *azservicebus.Client.
type sdkClient struct{ c *azservicebus.Client }

func (s sdkClient) NewSender(topic string) (sender, error) {
	snd, err := s.c.NewSender(topic, nil)
	if err != nil {
		return nil, err
	}
	return sdkSender{snd}, nil
}

func (s sdkClient) NewReceiver(topic, subscription string, opts *azservicebus.ReceiverOptions) (receiver, error) {
	return s.c.NewReceiverForSubscription(topic, subscription, opts)
}

func (s sdkClient) Close(ctx context.Context) error { return s.c.Close(ctx) }

// sdkSender is the sender of an *azservicebus.Sender.
type sdkSender struct{ s *azservicebus.Sender }

func (s sdkSender) NewMessageBatch(ctx context.Context, opts *azservicebus.MessageBatchOptions) (messageBatch, error) {
	return s.s.NewMessageBatch(ctx, opts)
}

func (s sdkSender) SendMessageBatch(ctx context.Context, batch messageBatch, opts *azservicebus.SendMessageBatchOptions) error {
	mb, ok := batch.(*azservicebus.MessageBatch)
	if !ok {
		return fmt.Errorf("send batch: %T is not a batch of this sender", batch)
	}
	return s.s.SendMessageBatch(ctx, mb, opts)
}

func (s sdkSender) Close(ctx context.Context) error { return s.s.Close(ctx) }

// durationISO formats d as the ISO 8601 duration the management API
// takes, in whole minutes and seconds (the form the SDK itself sends).
func durationISO(d time.Duration) string {
	d = d.Truncate(time.Second)
	return fmt.Sprintf("PT%dM%dS", d/time.Minute, (d%time.Minute)/time.Second)
}
