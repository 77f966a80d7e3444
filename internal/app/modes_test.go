package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/catalog"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/store"
	"github.com/datapump/datapump/internal/telemetry"
	"github.com/datapump/datapump/producer"
)

// A biller moves poll → direct → poll while items flow both ways: some
// announced by the source, some not (their publish "lost"), some both
// announced and polled. Every item reaches the CIS exactly once; the
// unannounced ones arrive through the reconcile sweep.
func TestModeSwitchPollDirectPollDeliversExactlyOnce(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		h := newHarness(t, b, func(cfg *config.Config) {
			cfg.Publisher.ReconcileAfter = time.Second
		})
		ctx := context.Background()
		bl := h.biller("b1", "shard1", catalog.ModePoll)
		other := h.biller("b2", "shard2", catalog.ModePoll)
		prod := producer.NewWithBus(h.app.Bus, nil)
		announce := func(ws []written) {
			t.Helper()
			its := make([]producer.Item, len(ws))
			for i, w := range ws {
				its[i] = producer.Item{Shard: w.shard, ItemType: w.key.ItemType, ItemID: w.key.ItemID, BillerID: w.biller}
			}
			require.NoError(t, prod.Publish(ctx, its...))
		}
		setMode := func(m catalog.Mode) {
			t.Helper()
			_, err := h.app.Catalog.BillerSetMode(ctx, catalog.SetModeParams{BillerID: bl.ID, Mode: m})
			require.NoError(t, err)
			// Every replica honours the change within one publisher interval.
			time.Sleep(2 * h.cfg.Publisher.Interval)
		}
		h.start()

		var all []written
		polled := h.insert(bl, 60, nil)
		all = append(all, polled...)
		all = append(all, h.insert(other, 30, nil)...)
		h.waitStatus(polled, store.StatusProcessed, 3*time.Minute)

		setMode(catalog.ModeDirect)
		direct := h.insert(bl, 60, nil)
		announce(direct[:40]) // the last 20 publishes are "lost"
		all = append(all, direct...)
		all = append(all, h.insert(other, 30, nil)...)
		h.waitStatus(direct, store.StatusProcessed, 3*time.Minute)
		reconciled := testutil.ToFloat64(h.app.Metrics.Items.WithLabelValues(telemetry.StageReconcile, "published"))
		require.GreaterOrEqual(t, reconciled, float64(20), "the unannounced items arrive through the reconcile sweep")

		setMode(catalog.ModePoll)
		back := h.insert(bl, 60, nil)
		announce(back[:30]) // announced directly and also found by polling
		all = append(all, back...)
		h.waitStatus(all, store.StatusProcessed, 2*time.Minute)
		time.Sleep(3 * h.cfg.Publisher.Interval)
		h.requireExactlyOnce(all)
		require.Equal(t, len(all), h.mock.Stats().Requests, "no CIS request beyond one per item")
	})
}
