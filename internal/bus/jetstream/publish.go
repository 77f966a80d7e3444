package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/datapump/datapump/internal/bus"
)

// publishChunk is how many async publishes are outstanding at once.
const publishChunk = 512

// Publish sends msgs to the topic's stream with async publishes and waits
// for every acknowledgement. Published counts messages stored, Duplicates
// those the server dropped as repeated MessageIDs. Every message is
// validated before any is sent; on a later error the result counts what
// was acknowledged so far.
func (b *Bus) Publish(ctx context.Context, topic string, msgs ...bus.Message) (bus.PublishResult, error) {
	var res bus.PublishResult
	if err := b.checkOpen(); err != nil {
		return res, err
	}
	if err := validateTopic(topic); err != nil {
		return res, fmt.Errorf("publish: %w", err)
	}
	out := make([]*nats.Msg, len(msgs))
	for i, m := range msgs {
		nm, err := toNATS(topic, m)
		if err != nil {
			return res, fmt.Errorf("publish to %s: message %d (%s): %w", topic, i, m.ID, err)
		}
		out[i] = nm
	}

	futures := make([]jetstream.PubAckFuture, 0, min(len(out), publishChunk))
	for start := 0; start < len(out); start += publishChunk {
		chunk := out[start:min(start+publishChunk, len(out))]
		futures = futures[:0]
		for i, nm := range chunk {
			f, err := b.publishAsync(ctx, nm)
			if err != nil {
				// Wait for what is already in flight so the counts are true.
				b.await(ctx, futures, &res)
				return res, fmt.Errorf("publish to %s: message %d: %w", topic, start+i, b.closedOr(err))
			}
			futures = append(futures, f)
		}
		if i, err := b.await(ctx, futures, &res); err != nil {
			return res, fmt.Errorf("publish to %s: message %d: %w", topic, start+i, b.closedOr(err))
		}
	}
	return res, nil
}

// Backpressure on asynchronous publishes. The connection allows
// maxPending unacknowledged publishes across all its callers; a caller at
// the cap waits for a slot (stallWait at a time) for as long as its ctx and
// maxStall allow, so a broker that acknowledges slowly slows the biller
// consumers down instead of failing their batches. (The client's own wait
// is 200 ms, after which it fails the publish: sixteen biller consumers
// publishing 500 items each on a loaded machine hit it, and their items
// waited for the rescuer.)
const (
	maxPending = 4 * publishChunk
	stallWait  = 500 * time.Millisecond
	maxStall   = 30 * time.Second
)

// publishAsync publishes nm without waiting for its acknowledgement,
// waiting first while the connection has maxPending publishes in flight.
func (b *Bus) publishAsync(ctx context.Context, nm *nats.Msg) (jetstream.PubAckFuture, error) {
	give := time.Now().Add(maxStall)
	for {
		f, err := b.js.PublishMsgAsync(nm, jetstream.WithStallWait(stallWait))
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return f, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", err, ctx.Err())
		}
		if time.Now().After(give) {
			return nil, fmt.Errorf("%w for %s", err, maxStall)
		}
	}
}

// await waits for the futures in order and counts their acks. It returns
// the index and error of the first failure but keeps counting the rest.
func (b *Bus) await(ctx context.Context, futures []jetstream.PubAckFuture, res *bus.PublishResult) (int, error) {
	first, firstErr := -1, error(nil)
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				res.Duplicates++
			} else {
				res.Published++
			}
		case err := <-f.Err():
			if firstErr == nil {
				first, firstErr = i, err
			}
		case <-ctx.Done():
			if firstErr == nil {
				first, firstErr = i, ctx.Err()
			}
			return first, firstErr
		}
	}
	return first, firstErr
}

// toNATS builds the NATS message of a bus message.
func toNATS(subject string, m bus.Message) (*nats.Msg, error) {
	nm := nats.NewMsg(subject)
	nm.Data = m.Body
	for k, v := range m.Properties {
		if err := validateProperty(k, v); err != nil {
			return nil, err
		}
		nm.Header.Set(k, v)
	}
	if m.ID != "" {
		if err := validateProperty("id", m.ID); err != nil {
			return nil, fmt.Errorf("message id: %w", err)
		}
		nm.Header.Set(headerMsgID, m.ID)
	}
	return nm, nil
}

// fromNATS splits headers back into MessageID and properties.
func fromNATS(h nats.Header, body []byte) bus.Message {
	m := bus.Message{ID: h.Get(headerMsgID), Body: body}
	for k, vs := range h {
		if isReservedHeader(k) || len(vs) == 0 {
			continue
		}
		if m.Properties == nil {
			m.Properties = make(map[string]string, len(h))
		}
		m.Properties[k] = vs[0]
	}
	return m
}
