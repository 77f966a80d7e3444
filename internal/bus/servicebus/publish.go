package servicebus

import (
	"context"
	"errors"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/datapump/datapump/internal/bus"
)

// Publish sends msgs to the topic in as few message batches as fit
// (NewMessageBatch, SendMessageBatch; a full batch is sent and a new one
// started). Every message is checked before any is sent.
//
// Service Bus drops a message whose MessageID it has seen within the
// topic's duplicate detection window, but it does not tell the sender:
// the send succeeds either way. So Duplicates is always 0, and on success
// Published is len(msgs), counting messages the broker may have dropped.
// On an error, Published counts the messages of the batches sent before
// it.
func (b *Bus) Publish(ctx context.Context, topic string, msgs ...bus.Message) (bus.PublishResult, error) {
	var res bus.PublishResult
	if err := b.checkOpen(); err != nil {
		return res, err
	}
	if topic == "" {
		return res, errors.New("publish: empty topic name")
	}
	out := make([]*azservicebus.Message, len(msgs))
	for i, m := range msgs {
		sm, err := toServiceBus(m)
		if err != nil {
			return res, fmt.Errorf("publish to %s: message %d (%s): %w", topic, i, m.ID, err)
		}
		out[i] = sm
	}
	if len(out) == 0 {
		return res, nil
	}
	s, err := b.sender(topic)
	if err != nil {
		return res, fmt.Errorf("publish to %s: %w", topic, err)
	}

	var batch messageBatch
	send := func() error {
		n := int(batch.NumMessages())
		if err := s.SendMessageBatch(ctx, batch, nil); err != nil {
			return b.closedOr(err)
		}
		res.Published += n
		batch = nil
		return nil
	}
	for i, sm := range out {
		for {
			if batch == nil {
				if batch, err = s.NewMessageBatch(ctx, nil); err != nil {
					return res, fmt.Errorf("publish to %s: new batch: %w", topic, b.closedOr(err))
				}
			}
			err := batch.AddMessage(sm, nil)
			if err == nil {
				break
			}
			if !errors.Is(err, azservicebus.ErrMessageTooLarge) {
				return res, fmt.Errorf("publish to %s: message %d (%s): %w", topic, i, msgs[i].ID, err)
			}
			if batch.NumMessages() == 0 {
				return res, fmt.Errorf("publish to %s: message %d (%s) alone is larger than a batch: %w", topic, i, msgs[i].ID, err)
			}
			// The batch is full: send it and add the message to a new one.
			if err := send(); err != nil {
				return res, fmt.Errorf("publish to %s: send batch ending before message %d: %w", topic, i, err)
			}
		}
	}
	if err := send(); err != nil {
		return res, fmt.Errorf("publish to %s: send batch: %w", topic, err)
	}
	return res, nil
}
