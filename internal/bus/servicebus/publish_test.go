package servicebus

import (
	"fmt"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

func TestPublishMapsMessageExactly(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	msg := bus.Message{
		ID:   "shard-1:payment:42",
		Body: []byte(`{"item":42}`),
		Properties: map[string]string{
			"schemaVersion": "1",
			"itemType":      "payment",
			"billerId":      "b-7",
			"traceparent":   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"empty":         "",
		},
	}
	res, err := h.b.Publish(t.Context(), "payments", msg)
	require.NoError(t, err)
	require.Equal(t, bus.PublishResult{Published: 1, Duplicates: 0}, res)

	batches := h.client.sender("payments").batches()
	require.Len(t, batches, 1)
	require.Len(t, batches[0], 1)
	want := &azservicebus.Message{
		MessageID: ptr("shard-1:payment:42"),
		Body:      []byte(`{"item":42}`),
		ApplicationProperties: map[string]any{
			"schemaVersion": "1",
			"itemType":      "payment",
			"billerId":      "b-7",
			"traceparent":   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"empty":         "",
		},
	}
	require.Equal(t, want, batches[0][0], "MessageID, body and application properties, nothing else")
}

func TestPublishSplitsFullBatches(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.client.batchSize = 2
	msgs := make([]bus.Message, 5)
	for i := range msgs {
		msgs[i] = bus.Message{ID: fmt.Sprintf("m-%d", i), Body: []byte("x")}
	}
	res, err := h.b.Publish(t.Context(), "payments", msgs...)
	require.NoError(t, err)
	require.Equal(t, bus.PublishResult{Published: 5}, res)

	var ids [][]string
	for _, batch := range h.client.sender("payments").batches() {
		var b []string
		for _, m := range batch {
			b = append(b, *m.MessageID)
		}
		ids = append(ids, b)
	}
	require.Equal(t, [][]string{{"m-0", "m-1"}, {"m-2", "m-3"}, {"m-4"}}, ids, "batches in order, split when full")
	require.Equal(t, 3, h.log.count("new batch payments"))

	// The sender is made once per topic and reused.
	_, err = h.b.Publish(t.Context(), "payments", msgs[0])
	require.NoError(t, err)
	require.Equal(t, 1, h.log.count("new sender payments"))
}

func TestPublishCountsBatchesSentBeforeAnError(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.client.batchSize = 2
	_, err := h.b.Publish(t.Context(), "payments") // nothing to send
	require.NoError(t, err)
	_, err = h.b.Publish(t.Context(), "payments", bus.Message{ID: "warm-up"})
	require.NoError(t, err)
	h.client.sender("payments").failSend = 3 // the second batch of the next publish

	msgs := make([]bus.Message, 5)
	for i := range msgs {
		msgs[i] = bus.Message{ID: fmt.Sprintf("m-%d", i)}
	}
	res, err := h.b.Publish(t.Context(), "payments", msgs...)
	require.Error(t, err)
	require.Equal(t, bus.PublishResult{Published: 2}, res, "the first batch was sent")
}

func TestPublishRefusesInvalidMessagesBeforeSending(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for name, bad := range map[string]bus.Message{
		"reserved prefix":    {ID: "x", Properties: map[string]string{"datapump-delivery-count": "1"}},
		"broker reason":      {ID: "x", Properties: map[string]string{"DeadLetterReason": "r"}},
		"broker description": {ID: "x", Properties: map[string]string{"deadlettererrordescription": "d"}},
		"empty name":         {ID: "x", Properties: map[string]string{"": "v"}},
		"id too long":        {ID: strings.Repeat("i", maxMessageIDLength+1)},
	} {
		res, err := h.b.Publish(t.Context(), "payments", bus.Message{ID: "fine"}, bad)
		require.Error(t, err, name)
		require.Equal(t, bus.PublishResult{}, res, name)
	}
	require.Zero(t, h.log.count("new sender payments"), "nothing was sent")

	// A message too large for an empty batch is an error, after the
	// batch before it was sent.
	res, err := h.b.Publish(t.Context(), "payments", bus.Message{ID: "small"}, bus.Message{ID: "huge", Body: make([]byte, tooLarge+1)})
	require.ErrorIs(t, err, azservicebus.ErrMessageTooLarge)
	require.ErrorContains(t, err, "huge")
	require.Equal(t, bus.PublishResult{Published: 1}, res)
}
