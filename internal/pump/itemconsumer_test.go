package pump

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/store"
)

// claimEnrichStore answers the two statements claimAndEnrich makes; the
// rest of store.Store is left nil (a call to it panics the test).
type claimEnrichStore struct {
	store.Store
	claims   []store.ItemClaimResult
	rows     []store.EnrichResult
	readErr  error
	readKeys [][]store.ItemKey
}

func (s *claimEnrichStore) ControlClaimBatch(_ context.Context, ps []store.ControlClaimItemParams) ([]store.ItemClaimResult, error) {
	return s.claims[:len(ps)], nil
}

func (s *claimEnrichStore) ItemEnrichBatch(_ context.Context, keys []store.ItemKey) ([]store.EnrichResult, error) {
	s.readKeys = append(s.readKeys, keys)
	if s.readErr != nil {
		return nil, s.readErr
	}
	return s.rows[:len(keys)], nil
}

func claimParams(ids ...int64) []store.ControlClaimItemParams {
	ps := make([]store.ControlClaimItemParams, len(ids))
	for i, id := range ids {
		ps[i] = store.ControlClaimItemParams{Key: store.ItemKey{ItemType: "payment", ItemID: id}}
	}
	return ps
}

// TestClaimAndEnrichReadsOnlyTheAcquiredItems: one enrichment read names
// the items the claim acquired, in order, and each gets its own row or
// error back; the others get no read and keep their claim outcome.
func TestClaimAndEnrichReadsOnlyTheAcquiredItems(t *testing.T) {
	missing := errors.New("related row missing")
	st := &claimEnrichStore{
		claims: []store.ItemClaimResult{
			{ItemClaim: store.ItemClaim{Outcome: store.ClaimAcquired}},
			{ItemClaim: store.ItemClaim{Outcome: store.ClaimDone}},
			{Err: errors.New("unknown item type")},
			{ItemClaim: store.ItemClaim{Outcome: store.ClaimAcquired}},
		},
		rows: []store.EnrichResult{{Row: map[string]any{"id": int64(1)}}, {Err: missing}},
	}
	out, err := claimAndEnrich(context.Background(), st, claimParams(1, 2, 3, 4))
	require.NoError(t, err)
	require.Len(t, out, 4)
	require.Equal(t, [][]store.ItemKey{{{ItemType: "payment", ItemID: 1}, {ItemType: "payment", ItemID: 4}}}, st.readKeys)

	require.Equal(t, store.ClaimAcquired, out[0].Outcome)
	require.Equal(t, map[string]any{"id": int64(1)}, out[0].Enriched.Row)
	require.NoError(t, out[0].Enriched.Err)
	require.Equal(t, store.ClaimDone, out[1].Outcome)
	require.Equal(t, store.EnrichResult{}, out[1].Enriched)
	require.Error(t, out[2].Err)
	require.Equal(t, store.EnrichResult{}, out[2].Enriched)
	require.ErrorIs(t, out[3].Enriched.Err, missing)
}

// TestClaimAndEnrichKeepsAFailedReadWithTheClaimedItems: the claims stand
// (the items are held and go through the retry path) and each acquired
// item carries the read's error.
func TestClaimAndEnrichKeepsAFailedReadWithTheClaimedItems(t *testing.T) {
	down := errors.New("connection reset")
	st := &claimEnrichStore{
		claims: []store.ItemClaimResult{
			{ItemClaim: store.ItemClaim{Outcome: store.ClaimAcquired}},
			{ItemClaim: store.ItemClaim{Outcome: store.ClaimBusy}},
		},
		readErr: down,
	}
	out, err := claimAndEnrich(context.Background(), st, claimParams(1, 2))
	require.NoError(t, err)
	require.Equal(t, store.ClaimAcquired, out[0].Outcome)
	require.ErrorIs(t, out[0].Enriched.Err, down)
	require.Equal(t, store.ClaimBusy, out[1].Outcome)
	require.NoError(t, out[1].Enriched.Err)
}

// TestClaimAndEnrichSkipsTheReadWhenNothingWasAcquired: a batch of late or
// duplicate messages costs the claim statement alone.
func TestClaimAndEnrichSkipsTheReadWhenNothingWasAcquired(t *testing.T) {
	st := &claimEnrichStore{claims: []store.ItemClaimResult{{ItemClaim: store.ItemClaim{Outcome: store.ClaimDone}}}}
	out, err := claimAndEnrich(context.Background(), st, claimParams(1))
	require.NoError(t, err)
	require.Len(t, out, 1)
	require.Empty(t, st.readKeys)
}
