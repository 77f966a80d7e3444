package pump

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
)

// BillerConsumerConfig tunes the biller consumer.
type BillerConsumerConfig struct {
	// Owner names this replica on the control records it claims.
	Owner string
	// Batch is how many items one claim takes.
	Batch int
	// MaxItemsPerMessage bounds the items one biller message moves, so one
	// biller's backlog cannot starve the others (the rest goes with the next
	// announcement).
	MaxItemsPerMessage int
	// TimeBudget bounds the time spent on one biller message.
	TimeBudget time.Duration
	// RetryDelay is how long a message waits before redelivery after a failure.
	RetryDelay time.Duration
	// CatalogTTL is how long a biller read from the catalog is trusted.
	CatalogTTL time.Duration
}

// BillerConsumer moves a biller's pending items onto their item topics.
type BillerConsumer struct {
	deps    *Deps
	cfg     BillerConsumerConfig
	billers *billerCache
	drained drainLog
}

// drainLog remembers, per biller, when this replica last began a claim that
// found nothing pending: everything an announcement published before that
// counted had been claimed by then. The publisher announces a biller every
// interval while it has pending items, so during a backlog a biller's
// announcements queue up behind the ones that drain it, and each would
// otherwise cost a claim that scans the biller's rows to find nothing.
// (A claim that came back short but not empty is not marked: an
// announcement queued behind it still picks up items written since, as it
// did before, rather than leaving them to the next round.)
type drainLog struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (l *drainLog) mark(billerID string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at == nil {
		l.at = map[string]time.Time{}
	}
	if at.After(l.at[billerID]) {
		l.at[billerID] = at
	}
}

// stale reports whether an announcement published at publishedAt came
// before the last claim that found the biller empty.
func (l *drainLog) stale(billerID string, publishedAt time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return publishedAt.Before(l.at[billerID])
}

// NewBillerConsumer checks its dependencies and returns a biller consumer.
func NewBillerConsumer(deps *Deps, cfg BillerConsumerConfig) (*BillerConsumer, error) {
	if err := deps.validate(); err != nil {
		return nil, err
	}
	if cfg.Owner == "" || cfg.Batch <= 0 || cfg.MaxItemsPerMessage < cfg.Batch || cfg.TimeBudget <= 0 {
		return nil, fmt.Errorf("pump: invalid biller consumer config %+v", cfg)
	}
	return &BillerConsumer{deps: deps, cfg: cfg, billers: deps.billerCache(cfg.CatalogTTL)}, nil
}

// Handle processes one biller message and settles it.
func (c *BillerConsumer) Handle(ctx context.Context, d *bus.Delivery) {
	ctx, span := c.deps.Tracer.Start(extractTrace(ctx, d), "biller_consumer.handle", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("message_id", d.ID)))
	defer span.End()
	m, err := DecodeBillerMessage(d.Body)
	if err != nil {
		deadLetter(ctx, c.deps, d, ReasonInvalidMessage, err)
		return
	}
	log := c.deps.Logger.With("biller", m.BillerID, "message_id", d.ID)
	b, ok := c.billers.billerFor(ctx, c.deps, d, m.BillerID, c.cfg.RetryDelay)
	if !ok {
		return
	}
	if b.Mode != catalog.ModePoll {
		log.Info("biller is not in poll mode; ignoring announcement", "mode", b.Mode)
		complete(ctx, c.deps, d)
		return
	}
	st, err := c.deps.shard(b.Shard)
	if err != nil {
		deadLetter(ctx, c.deps, d, ReasonUnknownShard, err)
		return
	}
	if c.drained.stale(b.ID, m.PublishedAt) {
		// Whatever the announcement counted was claimed since; an item
		// pending now is counted and announced again by a later round.
		log.Debug("announcement older than a claim that found the biller empty; completed")
		complete(ctx, c.deps, d)
		return
	}
	var from time.Time
	if m.OldestPendingAt != nil {
		from = *m.OldestPendingAt
	}
	moved, err := c.drain(ctx, d, b, st, from)
	if err != nil {
		log.Warn("biller batch failed; claimed items stay Fetched for the rescuer", "error", err, "moved", moved)
		abandon(ctx, c.deps, d, c.cfg.RetryDelay)
		return
	}
	log.Debug("biller drained", "moved", moved)
	complete(ctx, c.deps, d)
}

// drain claims and publishes batches until nothing is pending, the per
// message bound is reached, or the time budget is spent. Claims start at
// from (the oldest pending item the publisher saw), then where the last
// claim ended: a row committed late below that is found by the next round.
func (c *BillerConsumer) drain(ctx context.Context, d *bus.Delivery, b catalog.Biller, st store.Store, from time.Time) (int, error) {
	deadline := c.deps.Now().Add(c.cfg.TimeBudget)
	moved := 0
	for moved < c.cfg.MaxItemsPerMessage && c.deps.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		// Before each further batch, make sure the message is still ours
		// (a broker that lost the lock says so); one that takes a single
		// batch is held by the receive loop's own renewals.
		if moved > 0 {
			if err := d.RenewLock(ctx); err != nil {
				return moved, fmt.Errorf("renew biller message lock: %w", err)
			}
		}
		limit := min(c.cfg.Batch, c.cfg.MaxItemsPerMessage-moved)
		claimedAt := c.deps.Now()
		claimed, err := st.ControlClaimPending(ctx, store.ControlClaimPendingParams{
			BillerID: b.ID, CutoverAt: b.CutoverAt, From: from, Limit: limit, Owner: c.cfg.Owner,
		})
		if err != nil {
			return moved, fmt.Errorf("claim pending items: %w", err)
		}
		if len(claimed) == 0 {
			c.drained.mark(b.ID, claimedAt)
			return moved, nil
		}
		from = claimed[len(claimed)-1].SourceCreatedAt
		if err := c.publish(ctx, b, claimed); err != nil {
			return moved, err
		}
		fenced := make([]store.Fenced, len(claimed))
		for i, cl := range claimed {
			fenced[i] = store.Fenced{ItemKey: cl.ItemKey, Version: cl.Version}
		}
		// Conditional: rows an item consumer already took (Fetched → Processing) stay as they are.
		n, err := st.ControlMarkQueued(ctx, fenced)
		if err != nil {
			return moved, fmt.Errorf("mark items queued: %w", err)
		}
		moved += len(claimed)
		created := make([]time.Time, 0, n)
		for _, cl := range claimed {
			created = append(created, cl.SourceCreatedAt)
		}
		c.deps.Events.ItemsQueued(b.ID, created)
		if len(claimed) < limit {
			return moved, nil
		}
	}
	return moved, nil
}

func (c *BillerConsumer) publish(ctx context.Context, b catalog.Biller, claimed []store.Claimed) error {
	byTopic := map[string][]bus.Message{}
	for _, cl := range claimed {
		typ, err := c.deps.Items.Get(cl.ItemType)
		if err != nil {
			return err
		}
		ref := ItemRef{Shard: b.Shard, BillerID: b.ID, ItemKey: cl.ItemKey}
		m, err := EncodeItemMessage(itemMessageFor(ref, OriginPoll, cl.SourceCreatedAt), ref.MessageID())
		if err != nil {
			return err
		}
		spanCtx, span := c.deps.Tracer.Start(ctx, "biller_consumer.publish_item", trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("item", cl.ItemKey.String()), attribute.String("message_id", m.ID)))
		injectTrace(spanCtx, &m)
		span.End()
		byTopic[typ.Topic] = append(byTopic[typ.Topic], m)
	}
	for _, topic := range sortedKeys(byTopic) {
		r, err := c.deps.Bus.Publish(ctx, topic, byTopic[topic]...)
		if err != nil {
			return fmt.Errorf("publish items to %s: %w", topic, err)
		}
		c.deps.Events.DuplicatesDropped(topic, r.Duplicates)
	}
	return nil
}

// Topic is the topic the biller consumer subscribes to.
func (c *BillerConsumer) Topic() string { return items.BillerTopic }
