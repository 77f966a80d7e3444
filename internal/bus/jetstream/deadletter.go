package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/datapump/datapump/internal/bus"
)

// advisoryTimeout bounds the handling of one max-deliveries advisory.
const advisoryTimeout = 30 * time.Second

// deadLetterSource is the original message being dead-lettered.
type deadLetterSource struct {
	seq      uint64 // stream sequence in the topic's stream
	header   nats.Header
	data     []byte
	enqueued time.Time
}

// deadLetter publishes src to the subscription's dead-letter subject. The
// Nats-Msg-Id is deterministic per stream incarnation, consumer and stream
// sequence, so a repeat within the dead-letter stream's duplicate window
// is dropped by the server.
func (b *Bus) deadLetter(ctx context.Context, ref *subscriptionRef, src deadLetterSource, reason, description string, count int) error {
	nm := nats.NewMsg(deadLetterSubject(ref.stream, ref.consumer))
	nm.Data = src.data
	for k, vs := range src.header {
		if !isReservedHeader(k) {
			nm.Header[k] = vs
		}
	}
	if id := src.header.Get(headerMsgID); id != "" {
		nm.Header.Set(hdrMessageID, id)
	}
	nm.Header.Set(hdrReason, headerValue(reason))
	nm.Header.Set(hdrDescription, headerValue(description))
	nm.Header.Set(hdrDeliveryCount, strconv.Itoa(count))
	nm.Header.Set(hdrTopic, ref.topic)
	nm.Header.Set(hdrSubscription, headerValue(ref.name))
	nm.Header.Set(hdrStreamSeq, strconv.FormatUint(src.seq, 10))
	if !src.enqueued.IsZero() {
		nm.Header.Set(hdrEnqueuedAt, src.enqueued.UTC().Format(time.RFC3339Nano))
	}
	nm.Header.Set(headerMsgID, fmt.Sprintf("%s:%d:%s:%d", ref.stream, ref.streamCreated.UnixNano(), ref.consumer, src.seq))

	_, err := b.js.PublishMsg(ctx, nm)
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		// The dead-letter stream was deleted under us: recreate it once.
		if err = b.ensureDeadLetterStream(ctx); err == nil {
			_, err = b.js.PublishMsg(ctx, nm)
		}
	}
	if err != nil {
		return fmt.Errorf("publish dead letter: %w", b.closedOr(err))
	}
	return nil
}

// DeadLetters reads up to max dead letters of the subscription, oldest
// first, by direct gets on the dead-letter stream; nothing is consumed.
func (b *Bus) DeadLetters(ctx context.Context, topic, subscription string, max int) ([]bus.DeadLetter, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if err := validateTopic(topic); err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	if err := validateSubscription(subscription); err != nil {
		return nil, fmt.Errorf("dead letters of %s: %w", topic, err)
	}
	if max <= 0 {
		return nil, nil
	}
	s, err := b.js.Stream(ctx, deadLetterStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dead letters of %s/%s: %w", topic, subscription, b.closedOr(err))
	}
	subject := deadLetterSubject(streamName(topic), consumerName(subscription))
	var out []bus.DeadLetter
	for seq := uint64(1); len(out) < max; {
		raw, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("dead letters of %s/%s: %w", topic, subscription, b.closedOr(err))
		}
		out = append(out, toDeadLetter(raw))
		seq = raw.Sequence + 1
	}
	return out, nil
}

// toDeadLetter reads a dead-letter stream message back.
func toDeadLetter(raw *jetstream.RawStreamMsg) bus.DeadLetter {
	h := raw.Header
	m := fromNATS(h, raw.Data)
	m.ID = h.Get(hdrMessageID)
	count, _ := strconv.Atoi(h.Get(hdrDeliveryCount))
	return bus.DeadLetter{
		Message:        m,
		Topic:          h.Get(hdrTopic),
		Subscription:   h.Get(hdrSubscription),
		Reason:         h.Get(hdrReason),
		Description:    h.Get(hdrDescription),
		DeliveryCount:  count,
		DeadLetteredAt: raw.Time,
	}
}

// maxDeliveriesAdvisory is the part of the server's
// io.nats.jetstream.advisory.v1.max_deliver event the adapter uses.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// watchMaxDeliveries listens, while Receive runs, for the server giving up
// on a message of this consumer, and dead-letters the message from the
// stream. It is the fallback behind the reserved delivery (see the package
// doc). The returned stop unsubscribes and waits for the handling to end.
func (b *Bus) watchMaxDeliveries(ctx context.Context, ref *subscriptionRef) (stop func(), err error) {
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + ref.stream + "." + ref.consumer
	ch := make(chan *nats.Msg, 64)
	sub, err := b.nc.ChanSubscribe(subject, ch)
	if err != nil {
		return nil, fmt.Errorf("subscribe to max-deliveries advisories: %w", b.closedOr(err))
	}
	done := make(chan struct{})
	base := context.WithoutCancel(ctx)
	log := b.log.With("topic", ref.topic, "subscription", ref.name)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case m := <-ch:
				var adv maxDeliveriesAdvisory
				if err := json.Unmarshal(m.Data, &adv); err != nil {
					log.Error("unreadable max-deliveries advisory", "error", err)
					continue
				}
				actx, cancel := context.WithTimeout(base, advisoryTimeout)
				err := b.deadLetterFromStream(actx, ref, adv)
				cancel()
				if err != nil {
					log.Error("dead-letter message the server gave up on; it stays in the topic stream",
						"stream_seq", adv.StreamSeq, "error", err)
				} else {
					log.Warn("dead-lettered message from max-deliveries advisory", "stream_seq", adv.StreamSeq)
				}
			}
		}
	})
	return func() {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			log.Warn("unsubscribe max-deliveries advisories", "error", err)
		}
		close(done)
		wg.Wait()
	}, nil
}

// deadLetterFromStream dead-letters the message an advisory names, reading
// it from the topic's stream by sequence.
func (b *Bus) deadLetterFromStream(ctx context.Context, ref *subscriptionRef, adv maxDeliveriesAdvisory) error {
	if adv.Stream != ref.stream || adv.Consumer != ref.consumer {
		return fmt.Errorf("advisory for %s/%s, expected %s/%s", adv.Stream, adv.Consumer, ref.stream, ref.consumer)
	}
	raw, err := ref.streamHandle.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		return fmt.Errorf("get message %d: %w", adv.StreamSeq, b.closedOr(err))
	}
	src := deadLetterSource{seq: raw.Sequence, header: raw.Header, data: raw.Data, enqueued: raw.Time}
	count := ref.maxDeliveries
	if count == 0 {
		count = int(adv.Deliveries)
	}
	desc := fmt.Sprintf("lock expired on delivery %d of %d; the server stopped redelivering", count, count)
	return b.deadLetter(ctx, ref, src, bus.ReasonMaxDeliveries, desc, count)
}
