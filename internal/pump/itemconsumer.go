package pump

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
)

// ItemConsumerConfig tunes an item consumer.
type ItemConsumerConfig struct {
	// Owner names this replica on the items it claims.
	Owner string
	// Lease is how long a Processing claim lasts; the work on one item
	// (enrichment and CIS, with its in-call retries) is cut off well before it.
	Lease time.Duration
	// MaxAttempts is how many processing attempts an item gets before it is Failed.
	MaxAttempts int
	// RetryInitial and RetryMax bound the exponential backoff (with jitter)
	// between attempts; the item waits in Queued while others go on.
	RetryInitial time.Duration
	RetryMax     time.Duration
	// CatalogTTL is how long a biller read from the catalog is trusted.
	CatalogTTL time.Duration
	// Batch bounds how many items' claims, enrichment reads or finishes
	// go to a shard in one statement (see coalescer).
	Batch int
}

// ItemConsumer delivers items of one item type to the billers' CIS.
type ItemConsumer struct {
	deps    *Deps
	cfg     ItemConsumerConfig
	typ     items.Type
	billers *billerCache
	// batches holds each shard's coalescers: the handlers' claims,
	// enrichment reads and finishes go to the database together.
	batches map[string]*shardBatches
}

// shardBatches coalesces the per-item statements of one shard.
type shardBatches struct {
	claim  *coalescer[store.ControlClaimItemParams, claimedItem]
	finish *coalescer[store.ControlFinishParams, bool]
}

func newShardBatches(st store.Store, limit int) *shardBatches {
	return &shardBatches{
		claim: newCoalescer(limit, func(ctx context.Context, ps []store.ControlClaimItemParams) ([]claimedItem, error) {
			return claimAndEnrich(ctx, st, ps)
		}),
		finish: newCoalescer(limit, st.ControlFinishBatch),
	}
}

// claimedItem is one claim's result and, when the claim was acquired, the
// item's enrichment read.
type claimedItem struct {
	store.ItemClaimResult
	Enriched store.EnrichResult
}

// claimAndEnrich claims a batch of items and reads the related rows of
// those it acquired with the next statement, so a batch of claims costs two
// statements rather than one plus a batch of enrichment reads per handler
// that happens to wait together. A failed read fails only the enrichment:
// the items stay claimed and go through the retry path, as a failed read
// after the claim always did.
func claimAndEnrich(ctx context.Context, st store.Store, ps []store.ControlClaimItemParams) ([]claimedItem, error) {
	claims, err := st.ControlClaimBatch(ctx, ps)
	if err != nil {
		return nil, err
	}
	if len(claims) != len(ps) {
		return nil, fmt.Errorf("claim batch of %d returned %d results", len(ps), len(claims))
	}
	out := make([]claimedItem, len(claims))
	keys := make([]store.ItemKey, 0, len(claims))
	acquired := make([]int, 0, len(claims))
	for i, c := range claims {
		out[i].ItemClaimResult = c
		if c.Err == nil && c.Outcome == store.ClaimAcquired {
			keys = append(keys, ps[i].Key)
			acquired = append(acquired, i)
		}
	}
	if len(keys) == 0 {
		return out, nil
	}
	rows, err := st.ItemEnrichBatch(ctx, keys)
	if err == nil && len(rows) != len(keys) {
		err = fmt.Errorf("enrichment batch of %d returned %d results", len(keys), len(rows))
	}
	for j, i := range acquired {
		if err != nil {
			out[i].Enriched.Err = err
			continue
		}
		out[i].Enriched = rows[j]
	}
	return out, nil
}

// NewItemConsumer returns the consumer for one item type.
func NewItemConsumer(deps *Deps, typ items.Type, cfg ItemConsumerConfig) (*ItemConsumer, error) {
	if err := deps.validate(); err != nil {
		return nil, err
	}
	if deps.CIS == nil {
		return nil, errors.New("pump: item consumer needs a CIS client")
	}
	if cfg.Owner == "" || cfg.Lease <= 0 || cfg.MaxAttempts <= 0 || cfg.RetryInitial <= 0 || cfg.RetryMax < cfg.RetryInitial || cfg.Batch <= 0 {
		return nil, fmt.Errorf("pump: invalid item consumer config %+v", cfg)
	}
	batches := make(map[string]*shardBatches, len(deps.Shards))
	for name, st := range deps.Shards {
		batches[name] = newShardBatches(st, cfg.Batch)
	}
	return &ItemConsumer{deps: deps, cfg: cfg, typ: typ, billers: deps.billerCache(cfg.CatalogTTL), batches: batches}, nil
}

// Topic is the topic this consumer subscribes to.
func (c *ItemConsumer) Topic() string { return c.typ.Topic }

// Handle processes one item message and settles it.
func (c *ItemConsumer) Handle(ctx context.Context, d *bus.Delivery) {
	ctx, span := c.deps.Tracer.Start(extractTrace(ctx, d), "item_consumer.handle", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("message_id", d.ID), attribute.String("topic", d.Topic), attribute.Int("delivery_count", d.DeliveryCount)))
	defer span.End()
	m, err := DecodeItemMessage(d.Body)
	if err != nil {
		deadLetter(ctx, c.deps, d, ReasonInvalidMessage, err)
		return
	}
	if m.ItemType != c.typ.Name {
		reason := fmt.Errorf("itemType: %q on topic %s, which carries %q", m.ItemType, c.typ.Topic, c.typ.Name)
		if _, err := c.deps.Items.Get(m.ItemType); err != nil {
			reason = fmt.Errorf("itemType: %w", err)
		}
		deadLetter(ctx, c.deps, d, ReasonUnknownItemType, reason)
		return
	}
	ref := ItemRef{Shard: m.Shard, BillerID: m.BillerID, ItemKey: store.ItemKey{ItemType: m.ItemType, ItemID: m.ItemID}}
	log := itemLog{l: c.deps.Logger, ref: ref, messageID: d.ID}

	st, err := c.deps.shard(m.Shard)
	if err != nil {
		deadLetter(ctx, c.deps, d, ReasonUnknownShard, err)
		return
	}
	b, ok := c.billers.billerFor(ctx, c.deps, d, m.BillerID, c.cfg.RetryInitial)
	if !ok {
		return
	}
	if b.Shard != m.Shard {
		deadLetter(ctx, c.deps, d, ReasonUnknownShard, fmt.Errorf("biller %s lives on shard %s, not %s", b.ID, b.Shard, m.Shard))
		return
	}
	if b.Mode == catalog.ModeOff {
		// The old pump owns the biller now: leave it what we had not started.
		if _, err := st.ControlSkip(ctx, ref.ItemKey, "biller switched off"); err != nil {
			log.Warn("skip item of off biller", "error", err)
			abandon(ctx, c.deps, d, c.cfg.RetryInitial)
			return
		}
		log.Info("biller is off; item skipped")
		complete(ctx, c.deps, d)
		return
	}

	claim, err := c.batches[m.Shard].claim.do(ctx, store.ControlClaimItemParams{
		Key: ref.ItemKey, BillerID: ref.BillerID, Owner: c.cfg.Owner, Lease: c.cfg.Lease,
		InsertIfAbsent: true, Origin: claimOrigin(m.Origin),
	})
	if err == nil {
		err = claim.Err
	}
	if err != nil {
		// Includes a direct message whose source row is not visible yet:
		// wait; once it commits the item is found either way.
		log.Warn("claim item", "error", err)
		abandon(ctx, c.deps, d, c.cfg.RetryInitial)
		return
	}
	switch claim.Outcome {
	case store.ClaimAcquired:
		c.process(ctx, d, ref, b, claim.Control, claim.Enriched)
	case store.ClaimNotYet:
		now, err := st.Now(ctx)
		delay := c.cfg.RetryInitial
		if err == nil && claim.RetryAt.After(now) {
			delay = claim.RetryAt.Sub(now)
		}
		abandon(ctx, c.deps, d, delay)
	default:
		// Done (a duplicate or late message), Busy (another worker holds a
		// live lease; the rescuer covers it if that worker dies) or Absent
		// (a New record the publisher will announce): nothing to do here.
		log.Debug("item not claimable; message completed", "outcome", claim.Outcome.String(), "status", claim.Control.Status)
		complete(ctx, c.deps, d)
	}
}

func claimOrigin(messageOrigin string) string {
	if messageOrigin == OriginDirect {
		return OriginDirect
	}
	return OriginPoll
}

// process works one claimed item. Every store update names the claim's
// version, so a worker whose lease was taken over changes nothing.
func (c *ItemConsumer) process(ctx context.Context, d *bus.Delivery, ref ItemRef, b catalog.Biller, ctl store.Control, enriched store.EnrichResult) {
	st := c.deps.Shards[ref.Shard]
	batches := c.batches[ref.Shard]
	log := itemLog{l: c.deps.Logger, ref: ref, messageID: d.ID}
	fence := store.Fenced{ItemKey: ref.ItemKey, Version: ctl.Version}

	// The work is bounded well inside the lease and the lease is renewed
	// while it runs, so a slow database cannot hand the item to a second
	// worker mid-call. A shutdown lets the work in flight finish rather than
	// cut a CIS call short (which would send the item again later).
	workCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Lease*3/4)
	stopLease := c.keepLease(workCtx, cancel, st, fence)
	err := c.deliver(workCtx, ref, b, enriched)
	lost := stopLease()
	cancel()
	outcome := ItemOutcome{Ref: ref, SourceCreatedAt: ctl.SourceCreatedAt, Err: err}
	report := func(o string) {
		outcome.Outcome, outcome.At = o, c.deps.Now()
		c.deps.Events.ItemFinished(outcome)
	}
	if lost {
		log.Warn("lease lost while processing; the new holder finishes the item", "error", err)
		report(OutcomeLeaseLost)
		complete(ctx, c.deps, d)
		return
	}

	// Settle with a context that survives shutdown: the CIS call happened.
	settleCtx, cancelSettle := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancelSettle()
	switch {
	case err == nil:
		ok, ferr := batches.finish.do(settleCtx, store.ControlFinishParams{Fenced: fence, Status: store.StatusProcessed})
		if ferr != nil {
			// The CIS has the item; leave the message so a redelivery retries
			// the update (the CIS sees the same Idempotency-Key again).
			log.Error("mark processed", "error", ferr)
			abandon(settleCtx, c.deps, d, c.cfg.RetryInitial)
			return
		}
		if !ok {
			log.Warn("lease lost before marking processed; the new holder finishes the item")
			report(OutcomeLeaseLost)
		} else {
			report(OutcomeDelivered)
		}
		complete(settleCtx, c.deps, d)
	case isPermanent(err) || ctl.Attempts+1 >= c.cfg.MaxAttempts:
		if c.fail(settleCtx, d, ref, fence, err) {
			report(OutcomeFailed)
		}
	default:
		retryIn := c.backoff(ctl.Attempts + 1)
		ok, rerr := st.ControlRelease(settleCtx, store.ControlReleaseParams{Fenced: fence, Error: err.Error(), RetryIn: retryIn})
		if rerr != nil {
			log.Error("release item for retry", "error", rerr)
		} else if !ok {
			log.Warn("lease lost before release")
		}
		log.Warn("item delivery failed; will retry", "error", err, "attempt", ctl.Attempts+1, "retry_in", retryIn)
		report(OutcomeRetried)
		abandon(settleCtx, c.deps, d, retryIn)
	}
}

// fail marks the item Failed and dead-letters its message; it reports
// whether the item is now Failed by this worker's hand.
func (c *ItemConsumer) fail(ctx context.Context, d *bus.Delivery, ref ItemRef, fence store.Fenced, cause error) bool {
	ok, err := c.batches[ref.Shard].finish.do(ctx, store.ControlFinishParams{Fenced: fence, Status: store.StatusFailed, Error: cause.Error()})
	if err != nil {
		c.deps.Logger.Error("mark failed", "item", ref.ItemKey.String(), "error", err)
		abandon(ctx, c.deps, d, c.cfg.RetryInitial)
		return false
	}
	if !ok {
		c.deps.Logger.Warn("lease lost before marking failed", "item", ref.ItemKey.String())
		complete(ctx, c.deps, d)
		return false
	}
	deadLetter(ctx, c.deps, d, ReasonItemFailed, cause)
	return true
}

// keepLease renews the item's lease every third of its length while the
// item is worked; if a renewal finds the lease gone (taken over), it
// cancels the work. The returned stop ends the renewals, waiting for one
// in flight, and says whether the lease was lost. A timer, not a goroutine
// per item: most items finish before the first renewal is due.
func (c *ItemConsumer) keepLease(ctx context.Context, cancel context.CancelFunc, st store.Store, fence store.Fenced) (stop func() (lost bool)) {
	var (
		mu      sync.Mutex
		stopped bool
		gone    bool
		timer   *time.Timer
	)
	every := c.cfg.Lease / 3
	renew := func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		ok, err := st.ControlExtendLease(ctx, fence, c.cfg.Lease)
		switch {
		case err == nil && !ok:
			gone = true
			cancel()
			return
		case err != nil && ctx.Err() == nil:
			c.deps.Logger.Warn("extend lease", "item", fence.ItemKey.String(), "error", err)
		}
		timer.Reset(every)
	}
	mu.Lock()
	timer = time.AfterFunc(every, renew)
	mu.Unlock()
	return func() bool {
		timer.Stop()
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		return gone
	}
}

// itemLog writes one message's log lines with its item's attributes,
// building them only for a line that is written.
type itemLog struct {
	l         *slog.Logger
	ref       ItemRef
	messageID string
}

func (il itemLog) log(level slog.Level, msg string, args ...any) {
	ctx := context.Background()
	if !il.l.Enabled(ctx, level) {
		return
	}
	attrs := append([]any{"shard", il.ref.Shard, "biller", il.ref.BillerID, "item", il.ref.ItemKey.String(), "message_id", il.messageID}, args...)
	il.l.Log(ctx, level, msg, attrs...)
}

func (il itemLog) Debug(msg string, args ...any) { il.log(slog.LevelDebug, msg, args...) }
func (il itemLog) Info(msg string, args ...any)  { il.log(slog.LevelInfo, msg, args...) }
func (il itemLog) Warn(msg string, args ...any)  { il.log(slog.LevelWarn, msg, args...) }
func (il itemLog) Error(msg string, args ...any) { il.log(slog.LevelError, msg, args...) }

// permanentError marks failures that no retry can fix (bad data, a CIS rejection).
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func isPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p) || cis.IsPermanent(err)
}

// deliver maps the enriched item and sends it to the biller's CIS.
func (c *ItemConsumer) deliver(ctx context.Context, ref ItemRef, b catalog.Biller, enriched store.EnrichResult) error {
	err := enriched.Err
	row := enriched.Row
	if err != nil {
		if errors.Is(err, store.ErrRelatedMissing) || errors.Is(err, store.ErrNotFound) {
			return permanentError{fmt.Errorf("enrich %s: %w", ref.ItemKey, err)}
		}
		return fmt.Errorf("enrich %s: %w", ref.ItemKey, err)
	}
	payload, err := c.typ.Map(row)
	if err != nil {
		return permanentError{fmt.Errorf("map %s: invalid data: %w", ref.ItemKey, err)}
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return permanentError{fmt.Errorf("encode %s payload: %w", ref.ItemKey, err)}
	}
	header := http.Header{}
	header.Set("X-Biller-Id", b.ID)
	ctx, span := c.deps.Tracer.Start(ctx, "cis.send", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("biller", b.ID), attribute.String("path", c.typ.CISPath)))
	defer span.End()
	traceContext.Inject(ctx, propagation.HeaderCarrier(header))
	start := c.deps.Now()
	_, err = c.deps.CIS.Send(ctx, cis.Request{
		BillerID:       b.ID,
		Endpoint:       b.CIS,
		Path:           c.typ.CISPath,
		IdempotencyKey: ref.MessageID(),
		Body:           body,
		Header:         header,
	})
	outcome := CISOutcomeOK
	switch {
	case err != nil && cis.IsPermanent(err):
		outcome = CISOutcomePermanent
	case err != nil:
		outcome = CISOutcomeTransient
	}
	c.deps.Events.CISCall(b.ID, outcome, c.deps.Now().Sub(start))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return fmt.Errorf("send %s to CIS: %w", ref.ItemKey, err)
	}
	return nil
}

// backoff is the wait before attempt n+1: exponential from RetryInitial,
// capped at RetryMax, with full jitter over its upper half.
func (c *ItemConsumer) backoff(attempt int) time.Duration {
	d := c.cfg.RetryInitial
	for i := 1; i < attempt && d < c.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.RetryMax)
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}
