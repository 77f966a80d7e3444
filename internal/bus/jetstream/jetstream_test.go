package jetstream_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/bus/bustest"
	"github.com/datapump/datapump/internal/bus/jetstream"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// TestEmbedded runs the conformance suite with an embedded server per subtest.
func TestEmbedded(t *testing.T) {
	t.Parallel()
	bustest.Exercise(t.Context(), t, bustest.Features{}, func(t *testing.T) bus.Bus {
		b, err := jetstream.Open(t.Context(), jetstream.Config{Logger: testLogger(t), ConnectName: t.Name()})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, b.Close()) })
		return b
	})
}

// TestExternal runs the conformance suite against the server in
// DATAPUMP_TEST_NATS_URL, deleting what each subtest created.
func TestExternal(t *testing.T) {
	url := os.Getenv("DATAPUMP_TEST_NATS_URL")
	if url == "" {
		t.Skip("set DATAPUMP_TEST_NATS_URL to run")
	}
	t.Parallel()
	admin, err := nats.Connect(url, nats.Name("datapump-bus-test-cleanup"))
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	js, err := natsjs.New(admin)
	require.NoError(t, err)

	bustest.Exercise(t.Context(), t, bustest.Features{}, func(t *testing.T) bus.Bus {
		b, err := jetstream.Open(t.Context(), jetstream.Config{URL: url, Logger: testLogger(t), ConnectName: t.Name()})
		require.NoError(t, err)
		rec := &recordingBus{Bus: b}
		t.Cleanup(func() {
			require.NoError(t, b.Close())
			rec.deleteAll(t, js)
		})
		return rec
	})
}

// recordingBus remembers the topics a test ensured so they can be deleted
// from the shared server afterwards.
type recordingBus struct {
	*jetstream.Bus
	mu     sync.Mutex
	topics []string
}

func (r *recordingBus) EnsureTopic(ctx context.Context, spec bus.TopicSpec) (bus.Change, error) {
	r.mu.Lock()
	r.topics = append(r.topics, spec.Name)
	r.mu.Unlock()
	return r.Bus.EnsureTopic(ctx, spec)
}

// deleteAll deletes the topics' streams (and with them their consumers) and
// purges their dead letters. bustest.NewTestID names need no sanitising, so
// a topic's stream name is the topic itself.
func (r *recordingBus) deleteAll(t *testing.T, js natsjs.JetStream) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	dlq, dlqErr := js.Stream(ctx, "DLQ")
	for _, topic := range r.topics {
		if err := js.DeleteStream(ctx, topic); err != nil && !errors.Is(err, natsjs.ErrStreamNotFound) {
			t.Errorf("delete stream %s: %v", topic, err)
		}
		if dlqErr == nil {
			if err := dlq.Purge(ctx, natsjs.WithPurgeSubject("dlq."+topic+".>")); err != nil {
				t.Errorf("purge dead letters of %s: %v", topic, err)
			}
		}
	}
}
