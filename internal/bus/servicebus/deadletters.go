package servicebus

import (
	"context"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/datapump/datapump/internal/bus"
)

// peekPage is how many messages one PeekMessages call asks for.
const peekPage = 250

// DeadLetters peeks (PeekMessages: nothing is locked or removed) up to max
// messages of the subscription's dead-letter queue, oldest first, with a
// receiver on SubQueueDeadLetter that is closed before returning.
//
// Reason and Description are the broker's DeadLetterReason and
// DeadLetterErrorDescription. DeliveryCount and DeadLetteredAt are the
// values the adapter recorded when it dead-lettered the message; for a
// message the broker dead-lettered itself (the reserved delivery was also
// lost, or the message expired) they fall back to the broker's count of
// failed deliveries and the message's enqueue time.
func (b *Bus) DeadLetters(ctx context.Context, topic, subscription string, max int) ([]bus.DeadLetter, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if topic == "" || subscription == "" {
		return nil, fmt.Errorf("dead letters of %q/%q: empty topic or subscription name", topic, subscription)
	}
	if max <= 0 {
		return nil, nil
	}
	rcv, err := b.client.NewReceiver(topic, subscription, &azservicebus.ReceiverOptions{
		ReceiveMode: azservicebus.ReceiveModePeekLock,
		SubQueue:    azservicebus.SubQueueDeadLetter,
	})
	if err != nil {
		return nil, fmt.Errorf("dead letters of %s/%s: %w", topic, subscription, b.closedOr(err))
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		defer cancel()
		if err := rcv.Close(closeCtx); err != nil && !b.closed.Load() {
			b.log.Warn("close dead-letter receiver", "topic", topic, "subscription", subscription, "error", err)
		}
	}()

	var out []bus.DeadLetter
	from := int64(0)
	for len(out) < max {
		page, err := rcv.PeekMessages(ctx, min(max-len(out), peekPage), &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
		if err != nil {
			return nil, fmt.Errorf("dead letters of %s/%s: peek: %w", topic, subscription, b.closedOr(err))
		}
		if len(page) == 0 {
			break
		}
		for _, m := range page {
			if len(out) == max {
				break
			}
			out = append(out, deadLetterOf(m, topic, subscription))
			if seq := deref(m.SequenceNumber); seq >= from {
				from = seq + 1
			}
		}
	}
	return out, nil
}

// deadLetterOf maps a peeked dead-letter queue message.
func deadLetterOf(m *azservicebus.ReceivedMessage, topic, subscription string) bus.DeadLetter {
	dl := bus.DeadLetter{
		Message:      fromServiceBus(m),
		Topic:        topic,
		Subscription: subscription,
		Reason:       deref(m.DeadLetterReason),
		Description:  deref(m.DeadLetterErrorDescription),
	}
	if n, ok := propertyInt(m.ApplicationProperties, propDeliveryCount); ok {
		dl.DeliveryCount = n
	} else {
		// A peeked message's header carries the broker's delivery count
		// (abandons and lock expiries), to which the SDK adds one as it
		// does for a received message.
		dl.DeliveryCount = max(int(m.DeliveryCount)-1, 0)
	}
	if t, ok := propertyTime(m.ApplicationProperties, propDeadLetteredAt); ok {
		dl.DeadLetteredAt = t
	} else {
		dl.DeadLetteredAt = deref(m.EnqueuedTime)
	}
	return dl
}
