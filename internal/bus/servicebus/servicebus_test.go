package servicebus

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/bus/bustest"
)

// TestServiceBus runs the conformance suite against the namespace (or
// emulator) in DATAPUMP_TEST_SERVICEBUS, deleting the topics each subtest
// created (their subscriptions go with them).
func TestServiceBus(t *testing.T) {
	cs := os.Getenv("DATAPUMP_TEST_SERVICEBUS")
	if cs == "" {
		t.Skip("set DATAPUMP_TEST_SERVICEBUS to a Service Bus connection string to run")
	}
	t.Parallel()
	features := bustest.Features{
		MinLockDuration:     MinLockDuration,
		UncountedDuplicates: true,
		EventTimeout:        time.Minute,
	}
	bustest.Exercise(t.Context(), t, features, func(t *testing.T) bus.Bus {
		b, err := Open(t.Context(), Config{
			ConnectionString: cs,
			Logger:           slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		require.NoError(t, err)
		rec := &recordingBus{Bus: b}
		t.Cleanup(func() {
			require.NoError(t, b.Close())
			rec.deleteAll(t)
		})
		return rec
	})
}

// recordingBus remembers the topics a test ensured so they can be deleted
// from the shared namespace afterwards.
type recordingBus struct {
	*Bus
	mu     sync.Mutex
	topics []string
}

func (r *recordingBus) EnsureTopic(ctx context.Context, spec bus.TopicSpec) (bus.Change, error) {
	r.mu.Lock()
	r.topics = append(r.topics, spec.Name)
	r.mu.Unlock()
	return r.Bus.EnsureTopic(ctx, spec)
}

// deleteAll deletes the recorded topics through the management client,
// which Close leaves usable.
func (r *recordingBus) deleteAll(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, topic := range r.topics {
		if _, err := r.admin.DeleteTopic(ctx, topic, nil); err != nil && httpStatus(err) != 404 {
			t.Errorf("delete topic %s: %v", topic, err)
		}
	}
}
