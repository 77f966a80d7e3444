package servicebus

import (
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

// deadLettered builds a dead-letter queue message as PeekMessages returns
// it: the broker keeps the reason and description as application
// properties too.
func deadLettered(seq int64, id string, recorded bool) *azservicebus.ReceivedMessage {
	enq := testNow.Add(-time.Hour)
	m := &azservicebus.ReceivedMessage{
		MessageID:                  id,
		Body:                       []byte("body of " + id),
		SequenceNumber:             &seq,
		EnqueuedTime:               &enq,
		DeliveryCount:              4,
		DeadLetterReason:           ptr("InvalidPayload"),
		DeadLetterErrorDescription: ptr("amount is negative"),
		ApplicationProperties: map[string]any{
			"itemType":                   "payment",
			"attempt":                    int64(3), // another producer's typed property
			"DeadLetterReason":           "InvalidPayload",
			"DeadLetterErrorDescription": "amount is negative",
		},
	}
	if recorded {
		m.ApplicationProperties[propDeliveryCount] = int64(2)
		m.ApplicationProperties[propDeadLetteredAt] = testNow.Format(time.RFC3339Nano)
	}
	return m
}

func TestDeadLettersPeeksTheDeadLetterQueue(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rcv := newFakeReceiver(h.log)
	for i := range int64(300) {
		rcv.peek = append(rcv.peek, deadLettered(10+i, "m", true))
	}
	rcv.peek[0] = deadLettered(10, "first", true)
	rcv.peek[1] = deadLettered(11, "by-broker", false)
	h.client.nextReceiver = rcv

	dls, err := h.b.DeadLetters(t.Context(), "items", "consumer", 260)
	require.NoError(t, err)
	require.Len(t, dls, 260, "max is respected across pages")
	require.Equal(t, []string{
		"new receiver items/consumer mode=0 subqueue=1",
		"peek 250 from 0",
		"peek 10 from 260",
		"close receiver",
	}, h.log.snapshot(), "dead-letter sub-queue, peeked page by page from the oldest, receiver closed")

	require.Equal(t, bus.DeadLetter{
		Message: bus.Message{
			ID:         "first",
			Body:       []byte("body of first"),
			Properties: map[string]string{"itemType": "payment", "attempt": "3"},
		},
		Topic:          "items",
		Subscription:   "consumer",
		Reason:         "InvalidPayload",
		Description:    "amount is negative",
		DeliveryCount:  2,
		DeadLetteredAt: testNow,
	}, dls[0])
	// The broker dead-lettered this one itself: its count of failed
	// deliveries and the enqueue time stand in.
	require.Equal(t, "by-broker", dls[1].ID)
	require.Equal(t, 3, dls[1].DeliveryCount)
	require.Equal(t, testNow.Add(-time.Hour), dls[1].DeadLetteredAt)

	// Fewer than max: stops at the first empty page.
	h.client.nextReceiver = &fakeReceiver{log: h.log, peek: rcv.peek[:3]}
	dls, err = h.b.DeadLetters(t.Context(), "items", "consumer", 100)
	require.NoError(t, err)
	require.Len(t, dls, 3)
}
