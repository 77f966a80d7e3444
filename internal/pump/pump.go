// Package pump holds the three jobs of the data pump and the rescuer: the
// domain, written against the store, catalog and bus ports and free of any
// driver.
//
//   - Publisher: every interval, while it holds the leader lease, announces
//     each poll biller with pending items on the biller topic, and rescues
//     items stuck in Fetched/Queued or in an expired Processing lease.
//   - BillerConsumer: on a biller message, claims that biller's pending items
//     in batches (control records → Fetched), publishes one message per item
//     to its item type's topic, then moves them Fetched → Queued.
//   - ItemConsumer: on an item message, claims the item (→ Processing with a
//     lease and a fencing version), enriches it, sends it to the biller's
//     CIS and marks it Processed, or Failed, or hands it back for a retry.
package pump

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/singleflight"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
)

// Subscription names on the topics.
const (
	BillerSubscription = "biller-consumer"
	ItemSubscription   = "item-consumer"
)

// Dead-letter reasons set by the jobs.
const (
	ReasonInvalidMessage  = "InvalidMessage"
	ReasonUnknownItemType = "UnknownItemType"
	ReasonUnknownBiller   = "UnknownBiller"
	ReasonUnknownShard    = "UnknownShard"
	ReasonItemFailed      = "ItemFailed"
)

// CISSender delivers one request to a biller's CIS (implemented by cis.Client).
type CISSender interface {
	Send(ctx context.Context, r cis.Request) (cis.Result, error)
}

// Deps are the ports every job works through.
type Deps struct {
	Catalog catalog.Catalog
	// Shards maps a shard name to its store.
	Shards map[string]store.Store
	// Leaser grants the publisher's leader lease.
	Leaser store.Leaser
	Bus    bus.Bus
	Items  *items.Registry
	CIS    CISSender
	Logger *slog.Logger
	// Now is the pod clock, used only for message bucketing and backoff
	// jitter, never for leases (those use the database clock).
	Now func() time.Time
	// Events, when set, is told of each item outcome (metrics, progress).
	Events Events
	// Tracer, when set, traces each item across the three jobs; the W3C
	// traceparent travels in message properties.
	Tracer trace.Tracer

	// billers are the jobs' biller caches, one per trust period, so that
	// the biller consumer and every item consumer made with these Deps read
	// each biller once per period between them.
	billersMu sync.Mutex
	billers   map[time.Duration]*billerCache
}

// billerCache returns the Deps' cache of billers read at most once per ttl.
func (d *Deps) billerCache(ttl time.Duration) *billerCache {
	d.billersMu.Lock()
	defer d.billersMu.Unlock()
	if c, ok := d.billers[ttl]; ok {
		return c
	}
	if d.billers == nil {
		d.billers = map[time.Duration]*billerCache{}
	}
	c := newBillerCache(d.Catalog, ttl, d.Now)
	d.billers[ttl] = c
	return c
}

// Events receives what the jobs do, for metrics and progress.
// Implementations must be safe for concurrent use and fast.
type Events interface {
	// ItemsQueued: a biller consumer published items (their source created-at times).
	ItemsQueued(billerID string, createdAt []time.Time)
	// ItemFinished: an item consumer settled one item.
	ItemFinished(o ItemOutcome)
	// CISCall: one delivery to a CIS (in-call retries included) ended.
	CISCall(billerID, outcome string, d time.Duration)
	// ItemsRescued: the rescuer republished n stuck items and returned
	// reclaimed expired leases to Queued.
	ItemsRescued(republished, reclaimed int)
	// ItemsReconciled: the reconcile sweep published n unannounced items of a direct biller.
	ItemsReconciled(billerID string, n int)
	// MessageDeadLettered: a message was dead-lettered with reason.
	MessageDeadLettered(topic, reason string)
	// DuplicatesDropped: the broker dropped n published messages as duplicates.
	DuplicatesDropped(topic string, n int)
	// PublisherRound: a publisher round ended; leader says whether this replica leads.
	PublisherRound(leader bool, err error)
}

// Item outcomes reported in ItemOutcome.Outcome and CIS call outcomes.
const (
	OutcomeDelivered = "delivered"
	OutcomeFailed    = "failed"
	OutcomeRetried   = "retried"
	OutcomeSkipped   = "skipped"
	OutcomeLeaseLost = "lease_lost"

	CISOutcomeOK        = "ok"
	CISOutcomeTransient = "transient"
	CISOutcomePermanent = "permanent"
)

// ItemOutcome is what happened to one item in an item consumer.
type ItemOutcome struct {
	Ref     ItemRef
	Outcome string
	// SourceCreatedAt is the source row's created-at, when known.
	SourceCreatedAt time.Time
	// At is when the outcome was recorded (pod clock).
	At  time.Time
	Err error
}

// ItemRef names an item across shards.
type ItemRef struct {
	Shard    string
	BillerID string
	store.ItemKey
}

// MessageID returns the item's deterministic MessageID.
func (r ItemRef) MessageID() string { return ItemMessageID(r.Shard, r.ItemType, r.ItemID) }

func (d *Deps) validate() error {
	switch {
	case d.Catalog == nil:
		return errors.New("pump: catalog is required")
	case len(d.Shards) == 0:
		return errors.New("pump: at least one shard is required")
	case d.Bus == nil:
		return errors.New("pump: bus is required")
	case d.Items == nil:
		return errors.New("pump: item registry is required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Events == nil {
		d.Events = noEvents{}
	}
	if d.Tracer == nil {
		d.Tracer = noop.NewTracerProvider().Tracer("datapump")
	}
	return nil
}

func (d *Deps) shard(name string) (store.Store, error) {
	s, ok := d.Shards[name]
	if !ok {
		return nil, fmt.Errorf("shard %q is not configured", name)
	}
	return s, nil
}

type noEvents struct{}

func (noEvents) ItemsQueued(string, []time.Time)       {}
func (noEvents) ItemFinished(ItemOutcome)              {}
func (noEvents) CISCall(string, string, time.Duration) {}
func (noEvents) ItemsRescued(int, int)                 {}
func (noEvents) ItemsReconciled(string, int)           {}
func (noEvents) MessageDeadLettered(string, string)    {}
func (noEvents) DuplicatesDropped(string, int)         {}
func (noEvents) PublisherRound(bool, error)            {}

// billerReadTimeout bounds one shared catalog read of a biller; a handler
// waiting on it gives up sooner if its own context ends.
const billerReadTimeout = 10 * time.Second

// billerCache reads billers through the catalog at most once per ttl, so
// every replica honours a toggle change within ttl (one publisher interval).
// Callers that miss the same biller at once share one read.
type billerCache struct {
	cat   catalog.Catalog
	ttl   time.Duration
	now   func() time.Time
	reads singleflight.Group

	mu      sync.Mutex
	entries map[string]cachedBiller
}

type cachedBiller struct {
	b       catalog.Biller
	err     error
	fetched time.Time
}

func newBillerCache(cat catalog.Catalog, ttl time.Duration, now func() time.Time) *billerCache {
	return &billerCache{cat: cat, ttl: ttl, now: now, entries: map[string]cachedBiller{}}
}

func (c *billerCache) get(ctx context.Context, id string) (catalog.Biller, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[id]
	c.mu.Unlock()
	if ok && now.Sub(e.fetched) < c.ttl {
		return e.b, e.err
	}
	// The read is shared, so it runs on a context of its own: a handler
	// that gives up (its message's context ended, a shutdown) leaves the
	// read to the others waiting on it instead of failing them with its
	// cancellation, and stops waiting at once.
	shared := c.reads.DoChan(id, func() (any, error) {
		readCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), billerReadTimeout)
		defer cancel()
		b, err := c.cat.BillerGet(readCtx, id)
		if err != nil && !errors.Is(err, catalog.ErrBillerNotFound) {
			return b, err // transient: not cached
		}
		c.mu.Lock()
		c.entries[id] = cachedBiller{b: b, err: err, fetched: now}
		c.mu.Unlock()
		return b, err
	})
	select {
	case r := <-shared:
		return r.Val.(catalog.Biller), r.Err
	case <-ctx.Done():
		return catalog.Biller{}, ctx.Err()
	}
}

// billerFor reads the message's biller. When it cannot, it settles the
// delivery (dead-letter for an unknown biller, abandon with retryDelay for a
// catalog error) and returns false.
func (c *billerCache) billerFor(ctx context.Context, deps *Deps, d *bus.Delivery, billerID string, retryDelay time.Duration) (catalog.Biller, bool) {
	b, err := c.get(ctx, billerID)
	switch {
	case errors.Is(err, catalog.ErrBillerNotFound):
		deadLetter(ctx, deps, d, ReasonUnknownBiller, err)
		return b, false
	case err != nil:
		deps.Logger.Warn("read biller", "biller", billerID, "message_id", d.ID, "error", err)
		abandon(ctx, deps, d, retryDelay)
		return b, false
	}
	return b, true
}

// deadLetter dead-letters d with a reason, logging and counting it.
func deadLetter(ctx context.Context, deps *Deps, d *bus.Delivery, reason string, cause error) {
	deps.Logger.Warn("dead-lettering message", "topic", d.Topic, "message_id", d.ID, "reason", reason, "error", cause)
	if err := d.DeadLetter(ctx, reason, cause.Error()); err != nil {
		deps.Logger.Error("dead-letter failed", "topic", d.Topic, "message_id", d.ID, "error", err)
		return
	}
	deps.Events.MessageDeadLettered(d.Topic, reason)
}

func complete(ctx context.Context, deps *Deps, d *bus.Delivery) {
	if err := d.Complete(ctx); err != nil {
		deps.Logger.Warn("complete failed", "topic", d.Topic, "message_id", d.ID, "error", err)
	}
}

func abandon(ctx context.Context, deps *Deps, d *bus.Delivery, delay time.Duration) {
	if err := d.Abandon(ctx, delay); err != nil {
		deps.Logger.Warn("abandon failed", "topic", d.Topic, "message_id", d.ID, "error", err)
	}
}
