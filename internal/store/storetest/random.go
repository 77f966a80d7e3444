package storetest

import (
	"math/rand/v2"
	"time"

	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/store"
	"github.com/stretchr/testify/require"
)

// modelItem is what the state-machine test expects of one item.
type modelItem struct {
	key      store.ItemKey
	status   store.Status // "" while the item has no record
	version  int64
	attempts int
}

// testRandomStateMachine drives a few items through random operations,
// some with stale versions, and after every step compares the store with a
// model of the transitions: a step that the model rejects must change
// nothing, one it accepts must change exactly what it says and raise the
// version. The seed is logged so a failure can be replayed.
func testRandomStateMachine(e *env) {
	seed := rand.Uint64()
	e.t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))

	base := e.now().Add(-hour)
	var rows []store.DemoItem
	for i := 0; i < 6; i++ {
		typ := items.Payment
		if i%2 == 1 {
			typ = items.Paperless
		}
		rows = append(rows, store.DemoItem{ItemType: typ, BillerID: "b1", AmountCents: 10, Email: "r@example.com", CreatedAt: base.Add(time.Duration(i) * time.Second)})
	}
	keys := e.insert(rows...)
	model := make([]*modelItem, len(keys))
	for i, k := range keys {
		model[i] = &modelItem{key: k}
	}

	// version picks the item's version, or a stale one a third of the time.
	version := func(m *modelItem) (int64, bool) {
		if rng.IntN(3) == 0 {
			return m.version - 1 - int64(rng.IntN(2)), false
		}
		return m.version, true
	}
	for step := 0; step < 120; step++ {
		m := model[rng.IntN(len(model))]
		var accepted bool
		switch op := rng.IntN(7); op {
		case 0: // biller consumer: claim pending
			limit := 1 + rng.IntN(3)
			want := []store.ItemKey{}
			for _, x := range model {
				if x.status == "" && len(want) < limit {
					want = append(want, x.key)
				}
			}
			got := e.claimPending("b1", time.Time{}, limit, "bc")
			require.Equal(e.t, want, keysOf(got), "step %d: claim pending %d", step, limit)
			for _, x := range model {
				for _, c := range got {
					if c.ItemKey == x.key {
						x.status = store.StatusFetched
						x.version = e.checkTransition(step, x, store.StatusFetched)
					}
				}
			}
			continue
		case 1: // biller consumer: mark queued
			v, current := version(m)
			n, err := e.s.ControlMarkQueued(e.ctx, []store.Fenced{{ItemKey: m.key, Version: v}})
			require.NoError(e.t, err)
			accepted = current && m.status == store.StatusFetched
			require.Equal(e.t, boolInt(accepted), n, "step %d: mark queued %s in %q", step, m.key, m.status)
			if accepted {
				m.status = store.StatusQueued
			}
		case 2: // item consumer: claim
			c := e.claimItem(m.key, "w", hour)
			want := map[store.Status]store.ClaimOutcome{
				"": store.ClaimAbsent, store.StatusFetched: store.ClaimAcquired, store.StatusQueued: store.ClaimAcquired,
				store.StatusProcessing: store.ClaimBusy, store.StatusProcessed: store.ClaimDone,
				store.StatusFailed: store.ClaimDone, store.StatusSkipped: store.ClaimDone,
			}[m.status]
			require.Equal(e.t, want, c.Outcome, "step %d: claim %s in %q", step, m.key, m.status)
			accepted = c.Outcome == store.ClaimAcquired
			if accepted {
				m.status = store.StatusProcessing
			}
		case 3: // item consumer: finish
			v, current := version(m)
			st := store.StatusProcessed
			if rng.IntN(2) == 0 {
				st = store.StatusFailed
			}
			ok, err := e.s.ControlFinish(e.ctx, store.ControlFinishParams{Fenced: store.Fenced{ItemKey: m.key, Version: v}, Status: st, Error: "e"})
			require.NoError(e.t, err)
			accepted = current && m.status == store.StatusProcessing
			require.Equal(e.t, accepted, ok, "step %d: finish %s in %q", step, m.key, m.status)
			if accepted {
				m.status = st
			}
		case 4: // item consumer: release for a retry that is due at once
			v, current := version(m)
			ok, err := e.s.ControlRelease(e.ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: m.key, Version: v}, Error: "503"})
			require.NoError(e.t, err)
			accepted = current && m.status == store.StatusProcessing
			require.Equal(e.t, accepted, ok, "step %d: release %s in %q", step, m.key, m.status)
			if accepted {
				m.status = store.StatusQueued
				m.attempts++
			}
		case 5: // operator: skip
			ok, err := e.s.ControlSkip(e.ctx, m.key, "off")
			require.NoError(e.t, err)
			accepted = m.status == store.StatusFetched || m.status == store.StatusQueued
			require.Equal(e.t, accepted, ok, "step %d: skip %s in %q", step, m.key, m.status)
			if accepted {
				m.status = store.StatusSkipped
			}
		case 6: // operator: retry, or a dry run of it
			dryRun := rng.IntN(2) == 0
			got, err := e.s.ControlRetry(e.ctx, store.ControlRetryParams{Keys: []store.ItemKey{m.key}, DryRun: dryRun})
			require.NoError(e.t, err)
			want := []store.ItemKey{}
			if m.status == store.StatusFailed {
				want = append(want, m.key)
			}
			require.Equal(e.t, want, controlKeys(got), "step %d: retry (dry run %v) %s in %q", step, dryRun, m.key, m.status)
			accepted = !dryRun && m.status == store.StatusFailed
			if accepted {
				m.status = store.StatusQueued
				m.attempts = 0
			}
		}
		if accepted {
			m.version = e.checkTransition(step, m, m.status)
		} else {
			e.checkUnchanged(step, m)
		}
		var pending int64
		for _, x := range model {
			if x.status == "" {
				pending++
			}
		}
		want := map[string]int64{}
		if pending > 0 {
			want["b1"] = pending
		}
		require.Equal(e.t, want, e.pending(bc("b1")), "step %d: pending", step)
	}
}

// checkTransition requires the record to be in status with the model's
// attempts and a higher version than the model had; it returns the new version.
func (e *env) checkTransition(step int, m *modelItem, status store.Status) int64 {
	e.t.Helper()
	r := e.get(m.key)
	require.Equal(e.t, status, r.Status, "step %d: %s", step, m.key)
	require.Greater(e.t, r.Version, m.version, "step %d: %s: a transition raises the version", step, m.key)
	require.Equal(e.t, m.attempts, r.Attempts, "step %d: %s attempts", step, m.key)
	return r.Version
}

// checkUnchanged requires the record to be as the model has it.
func (e *env) checkUnchanged(step int, m *modelItem) {
	e.t.Helper()
	r, err := e.s.ControlGet(e.ctx, m.key)
	if m.status == "" {
		require.ErrorIs(e.t, err, store.ErrNotFound, "step %d: %s has no record", step, m.key)
		return
	}
	require.NoError(e.t, err)
	require.Equal(e.t, m.status, r.Status, "step %d: %s", step, m.key)
	require.Equal(e.t, m.version, r.Version, "step %d: %s: a rejected step keeps the version", step, m.key)
	require.Equal(e.t, m.attempts, r.Attempts, "step %d: %s attempts", step, m.key)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
