package pump

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/store/sqlite"
)

// recordingBus keeps what is published; the rest of bus.Bus is left nil.
type recordingBus struct {
	bus.Bus
	mu        sync.Mutex
	published []bus.Message
}

func (b *recordingBus) Publish(_ context.Context, _ string, msgs ...bus.Message) (bus.PublishResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.published = append(b.published, msgs...)
	return bus.PublishResult{Published: len(msgs)}, nil
}

func (b *recordingBus) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.published)
}

// settled records how a delivery was settled.
type settled struct {
	mu       sync.Mutex
	complete bool
}

func (s *settled) Complete(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.complete = true
	return nil
}
func (s *settled) Abandon(context.Context, time.Duration) error     { return nil }
func (s *settled) DeadLetter(context.Context, string, string) error { return nil }
func (s *settled) RenewLock(context.Context) error                  { return nil }

// TestBillerConsumerCompletesAnnouncementsOlderThanTheDrain: once a claim
// has found the biller empty, an announcement published before it is
// completed without a claim, and the items written since wait for an
// announcement published after it, which claims them. An announcement
// queued behind a claim that was short but not empty still claims.
func TestBillerConsumerCompletesAnnouncementsOlderThanTheDrain(t *testing.T) {
	ctx := context.Background()
	types := items.Builtin()
	sources := make([]store.Source, len(types))
	for i, typ := range types {
		sources[i] = typ.Source
	}
	st, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(t.TempDir(), "shard.db"), Sources: sources})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	require.NoError(t, st.Migrate(ctx))
	require.NoError(t, st.DemoSchemaCreate(ctx))
	biller := catalog.Biller{ID: "b1", Shard: "s1", Mode: catalog.ModePoll, CutoverAt: time.Now().Add(-time.Hour)}
	require.NoError(t, st.BillerUpsert(ctx, biller))
	registry, err := items.NewRegistry(types...)
	require.NoError(t, err)
	pub := &recordingBus{}
	bc, err := NewBillerConsumer(&Deps{Catalog: st, Shards: map[string]store.Store{"s1": st}, Bus: pub, Items: registry},
		BillerConsumerConfig{Owner: "test", Batch: 10, MaxItemsPerMessage: 10, TimeBudget: time.Minute, RetryDelay: time.Second, CatalogTTL: time.Minute})
	require.NoError(t, err)

	insert := func(n int) {
		t.Helper()
		demo := make([]store.DemoItem, n)
		for i := range demo {
			demo[i] = store.DemoItem{ItemType: "payment", BillerID: biller.ID, AmountCents: 100}
		}
		_, err := st.DemoItemsInsert(ctx, demo)
		require.NoError(t, err)
	}
	announce := func(publishedAt time.Time) *settled {
		t.Helper()
		m, err := EncodeBillerMessage(BillerMessage{BillerID: biller.ID, Shard: "s1", Pending: 1, PublishedAt: publishedAt}, publishedAt)
		require.NoError(t, err)
		s := &settled{}
		bc.Handle(ctx, bus.NewDelivery(m, items.BillerTopic, BillerSubscription, 1, publishedAt, s))
		require.True(t, s.complete, "the announcement is completed")
		return s
	}

	insert(3)
	first := time.Now().Add(-time.Second)
	announce(first)
	require.Equal(t, 3, pub.count(), "the first announcement drains the biller with a short claim")

	insert(1)
	announce(first)
	require.Equal(t, 4, pub.count(), "an announcement queued behind a short claim still claims")

	announce(first)
	require.Equal(t, 4, pub.count(), "this one finds the biller empty")

	insert(2)
	announce(first)
	require.Equal(t, 4, pub.count(), "an announcement older than the empty claim claims nothing")

	announce(time.Now())
	require.Equal(t, 6, pub.count(), "a later announcement claims what was written since")
}
