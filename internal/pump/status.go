package pump

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/store"
)

// BillerBacklog is where one biller's items are.
type BillerBacklog struct {
	BillerID string       `json:"biller"`
	Shard    string       `json:"shard"`
	Mode     catalog.Mode `json:"mode"`
	// Pending items have no control record yet (or are New).
	Pending int64 `json:"pending"`
	// OldestPendingAge is the age of the oldest pending item, by the shard's clock.
	OldestPendingAge time.Duration `json:"oldest_pending_age_ns"`
	// ByStatus counts control records per status. It has an entry, zero
	// included, for each status that was counted: every status but
	// Processed, and Processed too when the backlog was read WithProcessed.
	ByStatus map[store.Status]int64 `json:"by_status"`
}

// BacklogParams says what Backlog counts.
type BacklogParams struct {
	// WithProcessed also counts Processed records. They are the history, so
	// this reads every shard's whole control table: operators ask for it
	// (datapump status); what runs on its own, every interval or on every
	// page load, does not.
	WithProcessed bool
}

// countedStatuses returns ByStatus with a zero entry for each status p counts.
func (p BacklogParams) countedStatuses() map[store.Status]int64 {
	out := make(map[store.Status]int64, len(store.Statuses))
	for _, st := range store.Statuses {
		if st != store.StatusProcessed || p.WithProcessed {
			out[st] = 0
		}
	}
	return out
}

// Failed returns the count of Failed records.
func (b BillerBacklog) Failed() int64 { return b.ByStatus[store.StatusFailed] }

// Backlog reads every biller's backlog across all shards: control records
// per status (Processed only WithProcessed), and pending items (with the
// age of the oldest) for billers this pump owns.
func Backlog(ctx context.Context, cat catalog.Catalog, shards map[string]store.Store, p BacklogParams) ([]BillerBacklog, error) {
	billers, err := cat.BillerList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list billers: %w", err)
	}
	out := make(map[string]*BillerBacklog, len(billers))
	owned := map[string][]store.BillerCutover{}
	for _, b := range billers {
		out[b.ID] = &BillerBacklog{BillerID: b.ID, Shard: b.Shard, Mode: b.Mode, ByStatus: p.countedStatuses()}
		if b.Mode != catalog.ModeOff {
			owned[b.Shard] = append(owned[b.Shard], store.BillerCutover{BillerID: b.ID, CutoverAt: b.CutoverAt})
		}
	}
	var errs []error
	for _, name := range sortedKeys(shards) {
		st := shards[name]
		counts, err := st.ControlCountByStatus(ctx, store.ControlCountParams{WithProcessed: p.WithProcessed})
		if err != nil {
			errs = append(errs, fmt.Errorf("count statuses on shard %s: %w", name, err))
			continue
		}
		for _, c := range counts {
			b, ok := out[c.BillerID]
			if !ok {
				// Records of a biller no longer in the catalog still count.
				b = &BillerBacklog{BillerID: c.BillerID, Shard: name, Mode: catalog.ModeOff, ByStatus: p.countedStatuses()}
				out[c.BillerID] = b
			}
			b.ByStatus[c.Status] += c.Count
		}
		if len(owned[name]) == 0 {
			continue
		}
		pending, err := st.PendingCount(ctx, store.PendingCountParams{Billers: owned[name]})
		if err != nil {
			errs = append(errs, fmt.Errorf("count pending on shard %s: %w", name, err))
			continue
		}
		now, err := st.Now(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("read clock of shard %s: %w", name, err))
			continue
		}
		for _, p := range pending {
			if b, ok := out[p.BillerID]; ok {
				b.Pending = p.Pending
				if p.Pending > 0 && !p.OldestCreatedAt.IsZero() && now.After(p.OldestCreatedAt) {
					b.OldestPendingAge = now.Sub(p.OldestCreatedAt)
				}
			}
		}
	}
	list := make([]BillerBacklog, 0, len(out))
	for _, b := range out {
		list = append(list, *b)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].BillerID < list[j].BillerID })
	return list, errors.Join(errs...)
}

// RecentFailures lists up to limit Failed items per shard, newest first.
func RecentFailures(ctx context.Context, shards map[string]store.Store, limit int) ([]ShardControl, error) {
	var out []ShardControl
	var errs []error
	for _, name := range sortedKeys(shards) {
		recs, err := shards[name].ControlList(ctx, store.ControlListParams{Statuses: []store.Status{store.StatusFailed}, Limit: limit})
		if err != nil {
			errs = append(errs, fmt.Errorf("list failures on shard %s: %w", name, err))
			continue
		}
		for _, r := range recs {
			out = append(out, ShardControl{Shard: name, Control: r})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UpdatedAt.After(out[j].UpdatedAt) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, errors.Join(errs...)
}

// ShardControl is a control record with the shard it lives on.
type ShardControl struct {
	Shard string
	store.Control
}

// MessageID returns the item's MessageID.
func (s ShardControl) MessageID() string { return ItemMessageID(s.Shard, s.ItemType, s.ItemID) }
