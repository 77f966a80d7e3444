package pump

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/service"
	"github.com/datapump/datapump/internal/store"
)

// PublisherLease is the name of the leader lease the publisher holds.
const PublisherLease = "publisher"

// PublisherConfig tunes the publisher and its rescuer.
type PublisherConfig struct {
	// Owner names this replica in the leader lease.
	Owner string
	// Interval between rounds.
	Interval time.Duration
	// LeaseTTL is how long the leader lease lasts without renewal (> Interval).
	LeaseTTL time.Duration
	// StuckAfter: Fetched/Queued items unchanged this long are republished.
	StuckAfter time.Duration
	// RescueBatch bounds how many items one round rescues (and reconciles) per shard.
	RescueBatch int
	// ReconcileAfter is the grace a direct biller's source has to announce
	// an item; older unannounced items are published by the reconcile sweep.
	ReconcileAfter time.Duration
	// WatermarkLag is the safety margin the pending scan's watermarks keep
	// behind the database clock (see store.PendingCountParams).
	WatermarkLag time.Duration
	// FullSweepEvery is how often the leader scans every biller from its
	// cut-over instead of its watermark (the full sweep), beside the rounds;
	// a replica sweeps once soon after it becomes the leader.
	FullSweepEvery time.Duration
}

// Publisher announces billers with pending items and rescues stuck items.
type Publisher struct {
	deps   *Deps
	cfg    PublisherConfig
	loop   service.Loop
	sweeps service.Loop
	// leading is whether the last round held the leader lease.
	leading atomic.Bool
}

// NewPublisher checks its dependencies and returns a publisher.
func NewPublisher(deps *Deps, cfg PublisherConfig) (*Publisher, error) {
	if err := deps.validate(); err != nil {
		return nil, err
	}
	if deps.Leaser == nil {
		return nil, errors.New("pump: publisher needs a leaser")
	}
	if cfg.Owner == "" || cfg.Interval <= 0 || cfg.LeaseTTL <= cfg.Interval || cfg.StuckAfter <= 0 || cfg.RescueBatch <= 0 || cfg.ReconcileAfter <= 0 ||
		cfg.WatermarkLag <= 0 || cfg.FullSweepEvery <= 0 {
		return nil, fmt.Errorf("pump: invalid publisher config %+v", cfg)
	}
	return &Publisher{deps: deps, cfg: cfg}, nil
}

// Start runs a round every interval and, while this replica leads, a full
// sweep every FullSweepEvery, until Stop. The sweep has a loop of its own:
// it reads the history, and rounds must not wait for it.
func (p *Publisher) Start(ctx context.Context) error {
	err := p.loop.Start(ctx, func(ctx context.Context) error {
		t := time.NewTicker(p.cfg.Interval)
		defer t.Stop()
		for {
			if _, err := p.Round(ctx); err != nil && ctx.Err() == nil {
				p.deps.Logger.Error("publisher round failed", "error", err)
			}
			select {
			case <-ctx.Done():
				p.release()
				return nil
			case <-t.C:
			}
		}
	})
	if err != nil {
		return err
	}
	return p.sweeps.Start(ctx, p.sweepWhileLeading)
}

// Stop ends both loops and gives the leader lease up.
func (p *Publisher) Stop() error { return errors.Join(p.sweeps.Stop(), p.loop.Stop()) }

// sweepWhileLeading runs a full sweep once this replica leads (it cannot
// know when another replica last swept), then every FullSweepEvery while
// it keeps the lease. A failed sweep is tried again the next interval.
func (p *Publisher) sweepWhileLeading(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	var last time.Time
	for {
		switch {
		case !p.leading.Load():
			last = time.Time{}
		case last.IsZero() || p.deps.Now().Sub(last) >= p.cfg.FullSweepEvery:
			if _, err := p.Sweep(ctx); err != nil {
				if ctx.Err() == nil {
					p.deps.Logger.Error("full sweep failed", "error", err)
				}
			} else {
				last = p.deps.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// SweepResult says what one full sweep found.
type SweepResult struct {
	Shards int
	// Pending is how many pending items the sweep counted, across billers.
	Pending int64
	Elapsed time.Duration
}

// Sweep counts every poll and direct biller's pending items from its
// cut-over rather than its watermark, moving each watermark down to any
// row that committed later than the watermark lag. It announces nothing:
// the next round counts from the lowered watermarks and announces the
// rows it found (and the reconcile sweep publishes a direct biller's).
func (p *Publisher) Sweep(ctx context.Context) (SweepResult, error) {
	start := p.deps.Now()
	billers, err := p.deps.Catalog.BillerList(ctx)
	if err != nil {
		return SweepResult{}, fmt.Errorf("full sweep: list billers: %w", err)
	}
	byShard := ownedByShard(billers)
	shards := sortedKeys(byShard)
	res := SweepResult{Shards: len(shards)}
	var errs []error
	for _, c := range p.countShards(ctx, shards, byShard, true) {
		if c.err != nil {
			errs = append(errs, c.err)
		}
		for _, b := range c.counts {
			res.Pending += b.Pending
		}
	}
	res.Elapsed = p.deps.Now().Sub(start)
	p.deps.Logger.Info("full sweep", "shards", res.Shards, "pending", res.Pending, "elapsed", res.Elapsed)
	return res, errors.Join(errs...)
}

// ownedByShard groups the poll and direct billers (the ones this pump
// owns) by shard.
func ownedByShard(billers []catalog.Biller) map[string][]store.BillerCutover {
	byShard := map[string][]store.BillerCutover{}
	for _, b := range billers {
		if b.Mode == catalog.ModePoll || b.Mode == catalog.ModeDirect {
			byShard[b.Shard] = append(byShard[b.Shard], store.BillerCutover{BillerID: b.ID, CutoverAt: b.CutoverAt})
		}
	}
	return byShard
}

func (p *Publisher) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.deps.Leaser.LeaseRelease(ctx, PublisherLease, p.cfg.Owner); err != nil {
		p.deps.Logger.Warn("release publisher lease", "error", err)
	}
}

// RoundResult says what one round did.
type RoundResult struct {
	Leader            bool
	BillersAnnounced  int
	DuplicatesDropped int
	Rescued           int
	Reclaimed         int
	Skipped           int
	Reconciled        int
}

// Round runs one publisher round: take or renew the lease; if leader,
// announce every poll biller with pending items, then rescue stuck items.
func (p *Publisher) Round(ctx context.Context) (RoundResult, error) {
	res, err := p.round(ctx)
	p.deps.Events.PublisherRound(res.Leader, err)
	return res, err
}

func (p *Publisher) round(ctx context.Context) (RoundResult, error) {
	var res RoundResult
	leader, err := p.deps.Leaser.LeaseAcquire(ctx, PublisherLease, p.cfg.Owner, p.cfg.LeaseTTL)
	if err != nil {
		return res, fmt.Errorf("acquire publisher lease: %w", err)
	}
	res.Leader = leader
	p.leading.Store(leader)
	if !leader {
		return res, nil
	}
	billers, err := p.deps.Catalog.BillerList(ctx)
	if err != nil {
		return res, fmt.Errorf("list billers: %w", err)
	}
	var errs []error
	if err := p.announce(ctx, billers, &res); err != nil {
		errs = append(errs, err)
	}
	if err := p.rescue(ctx, billers, &res); err != nil {
		errs = append(errs, err)
	}
	if err := p.reconcile(ctx, billers, &res); err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// announce counts the pending items of every poll and direct biller, one
// grouped query per shard that also moves the billers' watermarks, and
// announces the poll billers that have some.
func (p *Publisher) announce(ctx context.Context, billers []catalog.Biller, res *RoundResult) error {
	byShard := ownedByShard(billers)
	poll := map[string]bool{}
	for _, b := range billers {
		poll[b.ID] = b.Mode == catalog.ModePoll
	}
	bucket := p.deps.Now().Truncate(p.cfg.Interval)
	shards := sortedKeys(byShard)
	counts := p.countShards(ctx, shards, byShard, false)
	var msgs []bus.Message
	var errs []error
	for i, shardName := range shards {
		if counts[i].err != nil {
			errs = append(errs, counts[i].err)
			continue
		}
		for _, c := range counts[i].counts {
			if c.Pending <= 0 || !poll[c.BillerID] {
				continue
			}
			bm := BillerMessage{BillerID: c.BillerID, Shard: shardName, Pending: c.Pending, PublishedAt: p.deps.Now().UTC()}
			if !c.OldestCreatedAt.IsZero() {
				oldest := c.OldestCreatedAt.UTC()
				bm.OldestPendingAt = &oldest
			}
			m, err := EncodeBillerMessage(bm, bucket)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			spanCtx, span := p.deps.Tracer.Start(ctx, "publisher.announce", trace.WithSpanKind(trace.SpanKindProducer),
				trace.WithAttributes(attribute.String("biller", c.BillerID), attribute.String("shard", shardName), attribute.Int64("pending", c.Pending)))
			injectTrace(spanCtx, &m)
			span.End()
			msgs = append(msgs, m)
		}
	}
	if len(msgs) > 0 {
		r, err := p.deps.Bus.Publish(ctx, items.BillerTopic, msgs...)
		if err != nil {
			errs = append(errs, fmt.Errorf("publish biller messages: %w", err))
		}
		res.BillersAnnounced += r.Published
		res.DuplicatesDropped += r.Duplicates
		p.deps.Events.DuplicatesDropped(items.BillerTopic, r.Duplicates)
	}
	return errors.Join(errs...)
}

// shardCount is one shard's pending count in a round.
type shardCount struct {
	counts []store.BillerPending
	err    error
}

// countShards counts every shard's pending items at once (the shards are
// separate databases, so a round takes as long as the slowest, not the
// sum), moving their watermarks; results are in the order of shards.
func (p *Publisher) countShards(ctx context.Context, shards []string, byShard map[string][]store.BillerCutover, full bool) []shardCount {
	out := make([]shardCount, len(shards))
	var wg sync.WaitGroup
	for i, name := range shards {
		st, err := p.deps.shard(name)
		if err != nil {
			out[i].err = err
			continue
		}
		wg.Go(func() {
			out[i].counts, out[i].err = st.PendingCount(ctx, store.PendingCountParams{Billers: byShard[name], Full: full, WatermarkLag: p.cfg.WatermarkLag})
			if out[i].err != nil {
				out[i].err = fmt.Errorf("count pending on shard %s: %w", name, out[i].err)
			}
		})
	}
	wg.Wait()
	return out
}

// rescue republishes items stuck in Fetched/Queued and returns expired
// Processing leases to Queued (and republishes them). The database is the
// source of truth; a lost message only delays an item.
func (p *Publisher) rescue(ctx context.Context, billers []catalog.Biller, res *RoundResult) error {
	modes := make(map[string]catalog.Mode, len(billers))
	for _, b := range billers {
		modes[b.ID] = b.Mode
	}
	var errs []error
	for _, shardName := range sortedKeys(p.deps.Shards) {
		st := p.deps.Shards[shardName]
		reclaimed, err := st.ControlReclaimExpired(ctx, store.ControlReclaimExpiredParams{Limit: p.cfg.RescueBatch})
		if err != nil {
			errs = append(errs, fmt.Errorf("reclaim expired leases on shard %s: %w", shardName, err))
		}
		stuck, err := st.ControlListStuck(ctx, store.ControlListStuckParams{OlderThan: p.cfg.StuckAfter, Limit: p.cfg.RescueBatch})
		if err != nil {
			errs = append(errs, fmt.Errorf("list stuck items on shard %s: %w", shardName, err))
		}
		res.Reclaimed += len(reclaimed)
		for _, c := range reclaimed {
			p.deps.Logger.Warn("processing lease expired; item returned to queue", "shard", shardName, "biller", c.BillerID, "item", c.ItemKey.String(), "attempts", c.Attempts)
		}
		n, skipped, err := p.republish(ctx, st, shardName, modes, append(reclaimed, stuck...))
		res.Rescued += n
		res.Skipped += skipped
		if err != nil {
			errs = append(errs, err)
		}
	}
	p.deps.Events.ItemsRescued(res.Rescued, res.Reclaimed)
	return errors.Join(errs...)
}

func (p *Publisher) republish(ctx context.Context, st store.Store, shardName string, modes map[string]catalog.Mode, recs []store.Control) (published, skipped int, err error) {
	if len(recs) == 0 {
		return 0, 0, nil
	}
	bucket := p.deps.Now().Truncate(p.cfg.StuckAfter).Unix()
	byTopic := map[string][]bus.Message{}
	var errs []error
	for _, c := range recs {
		if mode, ok := modes[c.BillerID]; !ok || mode == catalog.ModeOff {
			// The biller is no longer ours: the old pump owns what we had not started.
			ok, err := st.ControlSkip(ctx, c.ItemKey, "biller switched off")
			if err != nil {
				errs = append(errs, fmt.Errorf("skip %s: %w", c.ItemKey, err))
			} else if ok {
				skipped++
			}
			continue
		}
		typ, err := p.deps.Items.Get(c.ItemType)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ref := ItemRef{Shard: shardName, BillerID: c.BillerID, ItemKey: c.ItemKey}
		m, err := EncodeItemMessage(itemMessageFor(ref, OriginRescue, c.SourceCreatedAt), fmt.Sprintf("%s:rescue:%d", ref.MessageID(), bucket))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		byTopic[typ.Topic] = append(byTopic[typ.Topic], m)
	}
	for _, topic := range sortedKeys(byTopic) {
		r, err := p.deps.Bus.Publish(ctx, topic, byTopic[topic]...)
		if err != nil {
			errs = append(errs, fmt.Errorf("republish stuck items to %s: %w", topic, err))
			continue
		}
		published += r.Published
	}
	if published > 0 {
		p.deps.Logger.Info("republished stuck items", "shard", shardName, "count", published)
	}
	return published, skipped, errors.Join(errs...)
}

// reconcile publishes items of direct billers that no source announced
// within the grace period (the row was written, its publish was lost). The
// MessageID is the item's own, so a late announcement and the sweep's
// message are one to the broker.
func (p *Publisher) reconcile(ctx context.Context, billers []catalog.Biller, res *RoundResult) error {
	byShard := map[string][]store.BillerCutover{}
	for _, b := range billers {
		if b.Mode == catalog.ModeDirect {
			byShard[b.Shard] = append(byShard[b.Shard], store.BillerCutover{BillerID: b.ID, CutoverAt: b.CutoverAt})
		}
	}
	var errs []error
	for _, shardName := range sortedKeys(byShard) {
		st, err := p.deps.shard(shardName)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rows, err := st.PendingList(ctx, store.PendingListParams{Billers: byShard[shardName], OlderThan: p.cfg.ReconcileAfter, Limit: p.cfg.RescueBatch})
		if err != nil {
			errs = append(errs, fmt.Errorf("list unannounced items on shard %s: %w", shardName, err))
			continue
		}
		byTopic := map[string][]bus.Message{}
		perBiller := map[string]int{}
		for _, r := range rows {
			typ, err := p.deps.Items.Get(r.ItemType)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ref := ItemRef{Shard: shardName, BillerID: r.BillerID, ItemKey: r.ItemKey}
			m, err := EncodeItemMessage(itemMessageFor(ref, OriginDirect, r.CreatedAt), ref.MessageID())
			if err != nil {
				errs = append(errs, err)
				continue
			}
			byTopic[typ.Topic] = append(byTopic[typ.Topic], m)
			perBiller[r.BillerID]++
		}
		for _, topic := range sortedKeys(byTopic) {
			r, err := p.deps.Bus.Publish(ctx, topic, byTopic[topic]...)
			if err != nil {
				errs = append(errs, fmt.Errorf("publish unannounced items to %s: %w", topic, err))
				continue
			}
			res.Reconciled += r.Published
			p.deps.Events.DuplicatesDropped(topic, r.Duplicates)
		}
		for _, id := range sortedKeys(perBiller) {
			p.deps.Events.ItemsReconciled(id, perBiller[id])
			p.deps.Logger.Info("reconcile sweep published unannounced items", "shard", shardName, "biller", id, "count", perBiller[id])
		}
	}
	return errors.Join(errs...)
}

func itemMessageFor(ref ItemRef, origin string, createdAt time.Time) ItemMessage {
	m := ItemMessage{Shard: ref.Shard, ItemType: ref.ItemType, ItemID: ref.ItemID, BillerID: ref.BillerID, Origin: origin}
	if !createdAt.IsZero() {
		t := createdAt.UTC()
		m.CreatedAt = &t
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
