package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/cis/mockcis"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/pump"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/telemetry"
)

// slowCIS is a configuration whose item lease (6 s) is renewed every 2 s,
// and a CIS call that may take up to 3 s.
func slowCIS(cfg *config.Config) {
	cfg.ItemConsumer.Lease = 6 * time.Second
	cfg.CIS.Timeout = 3 * time.Second
	cfg.CIS.Retries = 0
}

// watchProcessing polls the item's record while it is Processing and
// returns the record whose lease reached furthest.
func watchProcessing(t *testing.T, st store.Store, key store.ItemKey, within time.Duration) store.Control {
	t.Helper()
	var furthest store.Control
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		c, err := st.ControlGet(context.Background(), key)
		if err == nil && c.Status == store.StatusProcessing && c.LeaseUntil.After(furthest.LeaseUntil) {
			furthest = c
		}
		if err == nil && c.Status.Terminal() {
			return furthest
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not finish within %s", key, within)
	return furthest
}

// TestItemLeaseRenewedDuringASlowCISCall: an item whose CIS call outlasts
// a third of the lease has its lease pushed forward while the call runs,
// and is delivered once.
func TestItemLeaseRenewedDuringASlowCISCall(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, slowCIS)
		h.mock.SetFaults(mockcis.Faults{Latency: 2500 * time.Millisecond})
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ws := h.insert(bl, 1, nil)
		h.start()
		c := watchProcessing(t, h.app.Shards[ws[0].shard], ws[0].key, 3*time.Minute)
		require.False(t, c.ProcessingAt.IsZero(), "the item was seen Processing")
		require.Greater(t, c.LeaseUntil.Sub(c.ProcessingAt), h.cfg.ItemConsumer.Lease,
			"the lease was renewed past the one the claim took (%s after processing began)", c.LeaseUntil.Sub(c.ProcessingAt))
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)
		h.requireExactlyOnce(ws)
	})
}

// TestItemLeaseLostCancelsTheWork: when the claim is taken over while the
// CIS call runs (here an operator hands the item back), the next renewal
// finds the lease gone, the work is cancelled and the worker changes
// nothing; the item is later rescued and delivered.
func TestItemLeaseLostCancelsTheWork(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, func(cfg *config.Config) {
			slowCIS(cfg)
			cfg.Publisher.StuckAfter = time.Second
		})
		h.mock.SetFaults(mockcis.Faults{Latency: 2500 * time.Millisecond})
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		ws := h.insert(bl, 1, nil)
		st := h.app.Shards[ws[0].shard]
		h.start()
		ctx := context.Background()
		// Take the claim over while the worker waits on the CIS. (On a loaded
		// machine the worker may itself hand an attempt back after a
		// transient error; then the next claim is taken over.)
		var held store.Control
		require.Eventually(t, func() bool {
			c, err := st.ControlGet(ctx, ws[0].key)
			if err != nil || c.Status != store.StatusProcessing {
				return false
			}
			ok, err := st.ControlRelease(ctx, store.ControlReleaseParams{Fenced: store.Fenced{ItemKey: c.ItemKey, Version: c.Version}, Error: "taken over by the test"})
			held = c
			return err == nil && ok
		}, 3*time.Minute, 10*time.Millisecond)
		h.mock.SetFaults(mockcis.Faults{})

		lost := h.app.Metrics.Items.WithLabelValues(telemetry.StageItemConsumer, pump.OutcomeLeaseLost)
		require.Eventually(t, func() bool { return testutil.ToFloat64(lost) == 1 }, 3*time.Minute, 10*time.Millisecond,
			"the worker noticed it lost the lease")
		h.waitStatus(ws, store.StatusProcessed, 3*time.Minute)
		c, err := st.ControlGet(ctx, ws[0].key)
		require.NoError(t, err)
		require.Greater(t, c.Version, held.Version+1, "processed by a later claim, not the worker that lost it")
	})
}
