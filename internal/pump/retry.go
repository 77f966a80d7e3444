package pump

import (
	"context"
	"errors"
	"fmt"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/store"
)

// RetryParams selects Failed items to send again. Keys, when set, are item
// MessageIDs ("shard:type:id"); other filters narrow further.
type RetryParams struct {
	store.ControlRetryParams
	// Items are item MessageIDs; each names its shard.
	Items []string
}

// Retried is one item moved (or, in a dry run, that would move) Failed → Queued.
type Retried struct {
	Shard string `json:"shard"`
	store.Control
}

// Retry moves matching Failed items back to Queued and, unless DryRun,
// publishes their messages so they are delivered now rather than when the
// rescuer next looks.
func Retry(ctx context.Context, deps *Deps, p RetryParams) ([]Retried, error) {
	if deps.Items == nil || (!p.DryRun && deps.Bus == nil) {
		return nil, errors.New("pump: retry needs the item registry and, unless a dry run, the bus")
	}
	keysByShard := map[string][]store.ItemKey{}
	for _, id := range p.Items {
		shard, typ, n, err := ParseItemMessageID(id)
		if err != nil {
			return nil, err
		}
		if _, err := deps.shard(shard); err != nil {
			return nil, err
		}
		keysByShard[shard] = append(keysByShard[shard], store.ItemKey{ItemType: typ, ItemID: n})
	}
	var out []Retried
	var errs []error
	for _, name := range sortedKeys(deps.Shards) {
		params := p.ControlRetryParams
		if len(p.Items) > 0 {
			if len(keysByShard[name]) == 0 {
				continue
			}
			params.Keys = keysByShard[name]
		}
		recs, err := deps.Shards[name].ControlRetry(ctx, params)
		if err != nil {
			errs = append(errs, fmt.Errorf("retry on shard %s: %w", name, err))
			continue
		}
		for _, r := range recs {
			out = append(out, Retried{Shard: name, Control: r})
		}
		if p.DryRun || len(recs) == 0 {
			continue
		}
		if err := publishRetried(ctx, deps, name, recs); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

func publishRetried(ctx context.Context, deps *Deps, shard string, recs []store.Control) error {
	byTopic := map[string][]bus.Message{}
	for _, c := range recs {
		typ, err := deps.Items.Get(c.ItemType)
		if err != nil {
			return err
		}
		ref := ItemRef{Shard: shard, BillerID: c.BillerID, ItemKey: c.ItemKey}
		// A new MessageID per retry: the broker's window may still hold the old one.
		m, err := EncodeItemMessage(itemMessageFor(ref, OriginRescue, c.SourceCreatedAt), fmt.Sprintf("%s:retry:%d", ref.MessageID(), c.Version))
		if err != nil {
			return err
		}
		byTopic[typ.Topic] = append(byTopic[typ.Topic], m)
	}
	for _, topic := range sortedKeys(byTopic) {
		if _, err := deps.Bus.Publish(ctx, topic, byTopic[topic]...); err != nil {
			return fmt.Errorf("publish retried items to %s (they stay Queued for the rescuer): %w", topic, err)
		}
	}
	return nil
}
