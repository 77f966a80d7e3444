package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/store"
)

// One item's trace runs from the publisher's announcement through the
// biller consumer to the item consumer, across both topics.
func TestOneTraceFollowsAnItemThroughTheThreeJobs(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, nil)
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		t.Cleanup(func() { tp.Shutdown(context.Background()) }) //nolint:errcheck
		h.app.Tracer = tp.Tracer("test")

		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ws := h.insert(bl, 1, nil)
		h.start()
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)
		id := ws[0].messageID()

		// The item consumer ends its span after settling the message.
		var handle sdktrace.ReadOnlySpan
		require.Eventually(t, func() bool {
			for _, s := range rec.Ended() {
				if s.Name() == "item_consumer.handle" && spanAttr(s, "message_id") == id {
					handle = s
					return true
				}
			}
			return false
		}, 10*time.Second, 20*time.Millisecond)

		byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
		for _, s := range rec.Ended() {
			byID[s.SpanContext().SpanID()] = s
		}
		traceID := handle.SpanContext().TraceID()
		require.True(t, traceID.IsValid())
		require.True(t, handle.Parent().IsRemote(), "the item consumer continues the trace carried by the message")

		// Walk the parent links back to the root.
		var chain []string
		for s := handle; ; {
			chain = append(chain, s.Name())
			require.Equal(t, traceID, s.SpanContext().TraceID(), "span %s is in another trace", s.Name())
			if !s.Parent().IsValid() {
				break
			}
			parent, ok := byID[s.Parent().SpanID()]
			require.True(t, ok, "parent of %s was not recorded (chain so far %v)", s.Name(), chain)
			s = parent
		}
		require.Equal(t, []string{"item_consumer.handle", "biller_consumer.publish_item", "biller_consumer.handle", "publisher.announce"}, chain)

		pub := byID[handle.Parent().SpanID()]
		require.Equal(t, id, spanAttr(pub, "message_id"))
		require.Equal(t, trace.SpanKindProducer, pub.SpanKind())
		require.Equal(t, trace.SpanKindConsumer, handle.SpanKind())
		announce := byID[byID[pub.Parent().SpanID()].Parent().SpanID()]
		require.Equal(t, "b1", spanAttr(announce, "biller"))

		// The CIS call is a child of the item consumer's span.
		var cisSpan sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			if s.Name() == "cis.send" && s.Parent().SpanID() == handle.SpanContext().SpanID() {
				cisSpan = s
			}
		}
		require.NotNil(t, cisSpan, "no cis.send span under the item's item_consumer.handle")
		require.Equal(t, traceID, cisSpan.SpanContext().TraceID())
	})
}

func spanAttr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if kv.Key == attribute.Key(key) {
			return kv.Value.Emit()
		}
	}
	return ""
}
