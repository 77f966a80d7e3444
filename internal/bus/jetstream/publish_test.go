package jetstream

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/bus/bustest"
)

// stallingJS is the connection's JetStream context, except that its next
// stalls asynchronous publishes answer as a client at its cap of
// unacknowledged publishes does after its stall wait.
type stallingJS struct {
	jetstream.JetStream
	stalls atomic.Int32
}

func (s *stallingJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if s.stalls.Add(-1) >= 0 {
		return nil, jetstream.ErrTooManyStalledMsgs
	}
	return s.JetStream.PublishMsgAsync(m, opts...)
}

// TestPublishWaitsOutAFullPipeline: a publish that finds the connection at
// its cap of unacknowledged publishes waits for a slot instead of failing
// the batch (which left a biller consumer's claimed items to the rescuer),
// and gives up only when its context ends, saying why.
func TestPublishWaitsOutAFullPipeline(t *testing.T) {
	t.Parallel()
	b := openEmbedded(t, EmbeddedConfig{})
	topic := bustest.NewTestID()
	_, err := b.EnsureTopic(t.Context(), bus.TopicSpec{Name: topic, DuplicateWindow: time.Minute})
	require.NoError(t, err)
	_, err = b.EnsureSubscription(t.Context(), bus.SubscriptionSpec{Topic: topic, Name: "s"})
	require.NoError(t, err)
	js := &stallingJS{JetStream: b.js}
	b.js = js

	msgs := make([]bus.Message, 10)
	for i := range msgs {
		msgs[i] = bus.Message{ID: fmt.Sprintf("m-%d", i), Body: []byte(`{}`)}
	}
	js.stalls.Store(25)
	res, err := b.Publish(t.Context(), topic, msgs...)
	require.NoError(t, err)
	require.Equal(t, bus.PublishResult{Published: 10}, res)

	js.stalls.Store(1 << 30)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = b.Publish(ctx, topic, bus.Message{ID: "late", Body: []byte(`{}`)})
	require.ErrorIs(t, err, jetstream.ErrTooManyStalledMsgs)
	require.ErrorIs(t, err, context.Canceled)
}
