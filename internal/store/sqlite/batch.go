package sqlite

import (
	"context"
	"fmt"

	"github.com/datapump/datapump/internal/store"
)

// ControlClaimBatch claims the items one after another, each with
// ControlClaimItem; an error is the item's own.
func (s *Store) ControlClaimBatch(ctx context.Context, ps []store.ControlClaimItemParams) ([]store.ItemClaimResult, error) {
	out := make([]store.ItemClaimResult, len(ps))
	for i, p := range ps {
		out[i].ItemClaim, out[i].Err = s.ControlClaimItem(ctx, p)
	}
	return out, nil
}

// ControlFinishBatch finishes the claims one after another with
// ControlFinish, after checking every status.
func (s *Store) ControlFinishBatch(ctx context.Context, ps []store.ControlFinishParams) ([]bool, error) {
	for _, p := range ps {
		if p.Status != store.StatusProcessed && p.Status != store.StatusFailed {
			return nil, fmt.Errorf("finish %s: status: %q is not Processed or Failed", p.ItemKey, p.Status)
		}
	}
	ok := make([]bool, len(ps))
	for i, p := range ps {
		var err error
		if ok[i], err = s.ControlFinish(ctx, p); err != nil {
			return nil, err
		}
	}
	return ok, nil
}

// ItemEnrichBatch enriches the items one after another with ItemEnrich.
func (s *Store) ItemEnrichBatch(ctx context.Context, keys []store.ItemKey) ([]store.EnrichResult, error) {
	out := make([]store.EnrichResult, len(keys))
	for i, k := range keys {
		out[i].Row, out[i].Err = s.ItemEnrich(ctx, k)
	}
	return out, nil
}
