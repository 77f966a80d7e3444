package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/datapump/datapump/internal/store"
)

// ControlClaimBatch claims the items in one BEGIN IMMEDIATE transaction on
// the single writer, one after another in order, each as ControlClaimItem
// does (claimItem) at one reading of the database clock; an item named
// twice therefore finds its first mention's claim. An unknown item type, a
// lease that is not positive and a missing or unreadable source row of an
// item to insert are that item's Err; any other failure rolls the whole
// batch back and fails the call.
func (s *Store) ControlClaimBatch(ctx context.Context, ps []store.ControlClaimItemParams) ([]store.ItemClaimResult, error) {
	out := make([]store.ItemClaimResult, len(ps))
	srcs := make([]*source, len(ps))
	todo := false
	for i, p := range ps {
		srcs[i], out[i].Err = s.claimCheck(p)
		todo = todo || out[i].Err == nil
	}
	if !todo {
		return out, nil
	}
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		now, err := txNow(ctx, tx)
		if err != nil {
			return err
		}
		for i, p := range ps {
			if out[i].Err != nil {
				continue
			}
			claim, err := claimItem(ctx, tx, now, srcs[i], p)
			var own itemError
			switch {
			case errors.As(err, &own):
				out[i].Err = fmt.Errorf("claim item %s: %w", p.Key, err)
			case err != nil:
				return fmt.Errorf("%s: %w", p.Key, err)
			default:
				out[i].ItemClaim = claim
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim items: %w", err)
	}
	return out, nil
}

// ControlFinishBatch checks every status, then finishes the claims in one
// BEGIN IMMEDIATE transaction, one after another in order, each as
// ControlFinish does (finish); a claim named twice is ended by its first
// mention. Any failure rolls the whole batch back.
func (s *Store) ControlFinishBatch(ctx context.Context, ps []store.ControlFinishParams) ([]bool, error) {
	for _, p := range ps {
		if err := p.Validate(); err != nil {
			return nil, err
		}
	}
	ok := make([]bool, len(ps))
	if len(ps) == 0 {
		return ok, nil
	}
	err := s.inWrite(ctx, func(tx *sql.Tx) error {
		for i, p := range ps {
			var err error
			if ok[i], err = finish(ctx, tx, p); err != nil {
				return fmt.Errorf("%s: %w", p.ItemKey, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finish items: %w", err)
	}
	return ok, nil
}

// ItemEnrichBatch runs every item's enrichment query, as ItemEnrich does
// (enrichRow), in one read transaction on one connection of the read pool,
// so the items are read from one snapshot of the file; each error is the
// item's own.
func (s *Store) ItemEnrichBatch(ctx context.Context, keys []store.ItemKey) ([]store.EnrichResult, error) {
	out := make([]store.EnrichResult, len(keys))
	srcs := make([]*source, len(keys))
	todo := false
	for i, key := range keys {
		src, err := s.source(key.ItemType)
		if err != nil {
			out[i].Err = fmt.Errorf("enrich %s: %w", key, err)
			continue
		}
		srcs[i], todo = src, true
	}
	if !todo {
		return out, nil
	}
	tx, err := s.read.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("enrich items: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // it only read
	for i, key := range keys {
		if srcs[i] != nil {
			out[i].Row, out[i].Err = srcs[i].enrichRow(ctx, tx, key)
		}
	}
	return out, nil
}
