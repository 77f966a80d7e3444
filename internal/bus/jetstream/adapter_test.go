package jetstream

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/bus/bustest"
)

// What the conformance suite cannot express: the embedded server's options,
// topic names that need sanitising, and the max-deliveries advisory fallback.

func openEmbedded(t *testing.T, cfg EmbeddedConfig) *Bus {
	t.Helper()
	b, err := Open(t.Context(), Config{
		Embedded: cfg,
		Logger:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// provision creates a topic and a subscription with a 2s lock.
func provision(t *testing.T, b *Bus, topic string, maxDeliveries int) bus.SubscriptionSpec {
	t.Helper()
	change, err := b.EnsureTopic(t.Context(), bus.TopicSpec{Name: topic, DuplicateWindow: time.Minute})
	require.NoError(t, err)
	require.Equal(t, bus.ChangeCreated, change)
	sub := bus.SubscriptionSpec{Topic: topic, Name: bustest.NewTestID(), LockDuration: 2 * time.Second, MaxDeliveries: maxDeliveries}
	change, err = b.EnsureSubscription(t.Context(), sub)
	require.NoError(t, err)
	require.Equal(t, bus.ChangeCreated, change)
	return sub
}

// receiveOne runs Receive until one delivery is completed and returns it.
func receiveOne(t *testing.T, b *Bus, sub bus.SubscriptionSpec) bus.Message {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan bus.Message, 1)
	done := make(chan error, 1)
	go func() {
		done <- b.Receive(ctx, sub.Topic, sub.Name, bus.ReceiveOptions{}, func(ctx context.Context, d *bus.Delivery) {
			if d.Complete(ctx) == nil {
				select {
				case got <- d.Message:
				default:
				}
			}
		})
	}()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	select {
	case m := <-got:
		return m
	case <-time.After(30 * time.Second):
		require.FailNow(t, "no delivery")
		return bus.Message{}
	}
}

func TestEmbeddedInProcessHasNoURL(t *testing.T) {
	t.Parallel()
	b := openEmbedded(t, EmbeddedConfig{})
	require.Empty(t, b.ClientURL())
	require.Nil(t, b.srv.Addr(), "the in-process server listens on no port")
}

func TestEmbeddedTempStoreIsRemovedOnClose(t *testing.T) {
	t.Parallel()
	b, err := Open(t.Context(), Config{})
	require.NoError(t, err)
	require.DirExists(t, b.tempDir)
	require.NoError(t, b.Close())
	require.NoDirExists(t, b.tempDir)
}

func TestCloseStopsRunningReceive(t *testing.T) {
	t.Parallel()
	b, err := Open(t.Context(), Config{})
	require.NoError(t, err)
	sub := provision(t, b, bustest.NewTestID(), 5)
	done := make(chan error, 1)
	go func() {
		done <- b.Receive(t.Context(), sub.Topic, sub.Name, bus.ReceiveOptions{}, func(context.Context, *bus.Delivery) {})
	}()
	require.Eventually(t, func() bool { return b.nc.NumSubscriptions() >= 2 }, 10*time.Second, 10*time.Millisecond,
		"Receive has subscribed (advisories and a pull inbox)")
	require.NoError(t, b.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, bus.ErrClosed)
	case <-time.After(30 * time.Second):
		require.FailNow(t, "Receive kept running after Close")
	}
}

func TestEmbeddedListenSharesServer(t *testing.T) {
	t.Parallel()
	owner := openEmbedded(t, EmbeddedConfig{Listen: true})
	url := owner.ClientURL()
	require.True(t, strings.HasPrefix(url, "nats://127.0.0.1:"), "ClientURL %q", url)

	// Another process would open the bus with the URL; so does this test.
	other, err := Open(t.Context(), Config{URL: url, ConnectName: "second-process"})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, other.Close()) })
	require.Equal(t, url, other.ClientURL())

	sub := provision(t, owner, bustest.NewTestID(), 5)
	res, err := other.Publish(t.Context(), sub.Topic, bus.Message{ID: "shared", Body: []byte("via the listener")})
	require.NoError(t, err)
	require.Equal(t, 1, res.Published)
	m := receiveOne(t, owner, sub)
	require.Equal(t, "shared", m.ID)
	require.Equal(t, "via the listener", string(m.Body))
}

func TestEmbeddedSyncAlways(t *testing.T) {
	t.Parallel()
	for _, always := range []bool{false, true} {
		b := openEmbedded(t, EmbeddedConfig{SyncAlways: always})
		require.Equal(t, always, b.srv.JetStreamConfig().SyncAlways, "SyncAlways %v", always)
	}
}

func TestEmbeddedStoreDirSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := Open(t.Context(), Config{Embedded: EmbeddedConfig{StoreDir: dir}})
	require.NoError(t, err)
	sub := provision(t, first, bustest.NewTestID(), 5)
	_, err = first.Publish(t.Context(), sub.Topic, bus.Message{ID: "kept", Body: []byte("across restarts")})
	require.NoError(t, err)
	require.NoError(t, first.Close())
	require.DirExists(t, dir, "a configured store dir is not removed")

	second := openEmbedded(t, EmbeddedConfig{StoreDir: dir})
	m := receiveOne(t, second, sub)
	require.Equal(t, "kept", m.ID)
}

func TestTopicNamesAreSanitised(t *testing.T) {
	t.Parallel()
	b := openEmbedded(t, EmbeddedConfig{})
	topic := "billing." + bustest.NewTestID() + ".payment-created"
	sub := provision(t, b, topic, 5)
	sub2 := sub
	sub2.Name = "item.consumer/" + bustest.NewTestID()
	_, err := b.EnsureSubscription(t.Context(), sub2)
	require.NoError(t, err)

	info, err := b.js.Stream(t.Context(), streamName(topic))
	require.NoError(t, err)
	require.NotContains(t, info.CachedInfo().Config.Name, ".")
	require.Equal(t, []string{topic}, info.CachedInfo().Config.Subjects)

	_, err = b.Publish(t.Context(), topic, bus.Message{ID: "dotted", Body: []byte("x")})
	require.NoError(t, err)
	require.Equal(t, "dotted", receiveOne(t, b, sub2).ID)

	// Another topic that sanitises to the same stream name is refused.
	clash := strings.ReplaceAll(topic, ".", "_")
	_, err = b.EnsureTopic(t.Context(), bus.TopicSpec{Name: clash})
	require.ErrorContains(t, err, "already exists")
	// So is another subscription name that maps to the same consumer.
	sub3 := sub2
	sub3.Name = strings.ReplaceAll(sub2.Name, "/", "_")
	_, err = b.EnsureSubscription(t.Context(), sub3)
	require.ErrorContains(t, err, "already belongs")
}

// TestEnsureWritesOnlyWhatDiffers watches the JetStream API requests that
// create or update the topic's stream and consumer: a spec the server
// already has (zero values included, which the server or the adapter turn
// into defaults) sends none and reports unchanged.
func TestEnsureWritesOnlyWhatDiffers(t *testing.T) {
	t.Parallel()
	b := openEmbedded(t, EmbeddedConfig{})
	topic := bustest.NewTestID()
	writes, err := b.nc.SubscribeSync("$JS.API.*.*." + streamName(topic) + ".>")
	require.NoError(t, err)
	t.Cleanup(func() { _ = writes.Unsubscribe() })
	streamWrites, err := b.nc.SubscribeSync("$JS.API.STREAM.*." + streamName(topic))
	require.NoError(t, err)
	t.Cleanup(func() { _ = streamWrites.Unsubscribe() })
	// writesSince counts the create and update requests sent since the last call.
	writesSince := func() int {
		t.Helper()
		require.NoError(t, b.nc.Flush())
		n := 0
		for _, sub := range []*nats.Subscription{writes, streamWrites} {
			for {
				m, err := sub.NextMsg(0)
				if err != nil {
					break
				}
				if strings.Contains(m.Subject, ".CREATE.") || strings.Contains(m.Subject, ".UPDATE.") {
					n++
				}
			}
		}
		return n
	}

	ensureTopic := func(spec bus.TopicSpec) bus.Change {
		t.Helper()
		change, err := b.EnsureTopic(t.Context(), spec)
		require.NoError(t, err)
		return change
	}
	ensureSubscription := func(spec bus.SubscriptionSpec) bus.Change {
		t.Helper()
		change, err := b.EnsureSubscription(t.Context(), spec)
		require.NoError(t, err)
		return change
	}

	tspec := bus.TopicSpec{Name: topic}
	require.Equal(t, bus.ChangeCreated, ensureTopic(tspec))
	require.Positive(t, writesSince())
	require.Equal(t, bus.ChangeUnchanged, ensureTopic(tspec), "zero window is the server's default")
	require.Zero(t, writesSince(), "an unchanged topic is not written")
	tspec.DuplicateWindow = serverDefaultDuplicates
	require.Equal(t, bus.ChangeUnchanged, ensureTopic(tspec), "the default spelled out")
	tspec.DuplicateWindow = time.Minute
	require.Equal(t, bus.ChangeUpdated, ensureTopic(tspec))
	require.Positive(t, writesSince())

	sspec := bus.SubscriptionSpec{Topic: topic, Name: bustest.NewTestID()}
	require.Equal(t, bus.ChangeCreated, ensureSubscription(sspec))
	require.Positive(t, writesSince())
	require.Equal(t, bus.ChangeUnchanged, ensureSubscription(sspec), "zero values are the adapter's defaults")
	require.Zero(t, writesSince(), "an unchanged consumer is not written")
	sspec.LockDuration, sspec.MaxDeliveries = defaultLockDuration, defaultMaxDeliveries
	require.Equal(t, bus.ChangeUnchanged, ensureSubscription(sspec), "the defaults spelled out")
	sspec.MaxDeliveries = 3
	require.Equal(t, bus.ChangeUpdated, ensureSubscription(sspec))
	require.Positive(t, writesSince())

	info, err := b.js.Consumer(t.Context(), streamName(topic), consumerName(sspec.Name))
	require.NoError(t, err)
	require.Equal(t, 4, info.CachedInfo().Config.MaxDeliver, "the update took effect (with the reserved delivery)")
}

func TestInvalidNamesAndProperties(t *testing.T) {
	t.Parallel()
	b := openEmbedded(t, EmbeddedConfig{})
	for _, topic := range []string{"", "a.*", "a.>", "a..b", "dlq.x", "$SYS.x", "with space"} {
		_, err := b.EnsureTopic(t.Context(), bus.TopicSpec{Name: topic})
		require.Error(t, err, "topic %q", topic)
	}
	sub := provision(t, b, bustest.NewTestID(), 5)
	for _, props := range []map[string]string{
		{"Nats-Expected-Stream": "x"},
		{"Datapump-Topic": "x"},
		{"with space": "x"},
		{"colon:key": "x"},
		{"k": "line\nbreak"},
		{"k": " leading"},
		{"k": "trailing\t"},
	} {
		res, err := b.Publish(t.Context(), sub.Topic,
			bus.Message{ID: "fine", Body: []byte("ok")},
			bus.Message{ID: "bad", Body: []byte("x"), Properties: props})
		require.Error(t, err, "properties %v", props)
		require.Equal(t, bus.PublishResult{}, res, "nothing is published when one message is invalid")
	}
	_, err := b.EnsureSubscription(t.Context(), bus.SubscriptionSpec{Topic: bustest.NewTestID(), Name: "x"})
	require.Error(t, err, "a subscription needs its topic")
}

// TestMaxDeliveriesAdvisoryFallback drives a message past the server's
// MaxDeliver outside the receive loop (as a crashed process would leave
// it) and checks that a running Receive dead-letters it from the advisory.
func TestMaxDeliveriesAdvisoryFallback(t *testing.T) {
	t.Parallel()
	b := openEmbedded(t, EmbeddedConfig{})
	sub := provision(t, b, bustest.NewTestID(), 1) // server MaxDeliver 2
	want := bus.Message{ID: "crashed", Body: []byte("body"), Properties: map[string]string{"biller": "b-1"}}
	_, err := b.Publish(t.Context(), sub.Topic, want)
	require.NoError(t, err)

	cons, err := b.js.Consumer(t.Context(), streamName(sub.Topic), consumerName(sub.Name))
	require.NoError(t, err)
	for i := 1; i <= 2; i++ {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		require.NoError(t, err)
		var n int
		for range batch.Messages() {
			n++ // received and never acknowledged
		}
		require.NoError(t, batch.Error())
		require.Equal(t, 1, n, "delivery %d", i)
	}

	handled := make(chan *bus.Delivery, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- b.Receive(ctx, sub.Topic, sub.Name, bus.ReceiveOptions{}, func(_ context.Context, d *bus.Delivery) {
			handled <- d
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	var dls []bus.DeadLetter
	require.Eventually(t, func() bool {
		dls, err = b.DeadLetters(t.Context(), sub.Topic, sub.Name, 10)
		return err == nil && len(dls) > 0
	}, 30*time.Second, 100*time.Millisecond, "the advisory fallback dead-letters the message")
	require.Len(t, dls, 1)
	require.Equal(t, want.ID, dls[0].ID)
	require.Equal(t, want.Body, dls[0].Body)
	require.Equal(t, want.Properties, dls[0].Properties)
	require.Equal(t, bus.ReasonMaxDeliveries, dls[0].Reason)
	require.Equal(t, 1, dls[0].DeliveryCount)
	require.Contains(t, dls[0].Description, "server stopped redelivering")
	require.Empty(t, handled, "the handler never saw the message")
}

// BenchmarkPublish measures one Publish call of 100 messages (async
// publishes, one wait for all acknowledgements) on the embedded server.
func BenchmarkPublish(b *testing.B) {
	bs, err := Open(b.Context(), Config{})
	require.NoError(b, err)
	b.Cleanup(func() { _ = bs.Close() })
	topic := bustest.NewTestID()
	_, err = bs.EnsureTopic(b.Context(), bus.TopicSpec{Name: topic, DuplicateWindow: time.Minute})
	require.NoError(b, err)
	_, err = bs.EnsureSubscription(b.Context(), bus.SubscriptionSpec{Topic: topic, Name: "bench"})
	require.NoError(b, err)
	const batch = 100
	msgs := make([]bus.Message, batch)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		for i := range msgs {
			msgs[i] = bus.Message{ID: fmt.Sprintf("m-%d", n), Body: []byte(`{"item":1}`), Properties: map[string]string{"biller": "b-1"}}
			n++
		}
		res, err := bs.Publish(b.Context(), topic, msgs...)
		if err != nil || res.Published != batch {
			b.Fatalf("publish: %+v %v", res, err)
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
}
