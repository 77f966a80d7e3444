package servicebus

import (
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
	"github.com/stretchr/testify/require"

	"github.com/datapump/datapump/internal/bus"
)

// ensureTopic runs EnsureTopic, requires success and returns the Change.
func (h *harness) ensureTopic(t *testing.T, spec bus.TopicSpec) bus.Change {
	t.Helper()
	change, err := h.b.EnsureTopic(t.Context(), spec)
	require.NoError(t, err)
	return change
}

// ensureSubscription runs EnsureSubscription, requires success and returns
// the Change.
func (h *harness) ensureSubscription(t *testing.T, spec bus.SubscriptionSpec) bus.Change {
	t.Helper()
	change, err := h.b.EnsureSubscription(t.Context(), spec)
	require.NoError(t, err)
	return change
}

func TestEnsureTopicRequestsDuplicateDetection(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	spec := bus.TopicSpec{Name: "payments", DuplicateWindow: 90 * time.Second}
	require.Equal(t, bus.ChangeCreated, h.ensureTopic(t, spec))
	require.Equal(t, []any{admin.TopicProperties{
		RequiresDuplicateDetection:          ptr(true),
		DuplicateDetectionHistoryTimeWindow: ptr("PT1M30S"),
	}}, h.admin.requests(), "exactly duplicate detection and its window")

	// The same spec again changes nothing.
	require.Equal(t, bus.ChangeUnchanged, h.ensureTopic(t, spec))
	require.Len(t, h.admin.requests(), 1)

	// The broker reports windows in its own form.
	h.admin.topics["payments"] = admin.TopicProperties{
		RequiresDuplicateDetection:          ptr(true),
		DuplicateDetectionHistoryTimeWindow: ptr("PT1M30S"),
		MaxSizeInMegabytes:                  ptr(int32(5120)),
	}
	require.Equal(t, bus.ChangeUnchanged, h.ensureTopic(t, spec))
	require.Len(t, h.admin.requests(), 1)

	// A new window updates the topic, keeping its other settings.
	spec.DuplicateWindow = 10 * time.Minute
	require.Equal(t, bus.ChangeUpdated, h.ensureTopic(t, spec))
	require.Equal(t, admin.TopicProperties{
		RequiresDuplicateDetection:          ptr(true),
		DuplicateDetectionHistoryTimeWindow: ptr("PT10M0S"),
		MaxSizeInMegabytes:                  ptr(int32(5120)),
	}, h.admin.requests()[1])
	require.Equal(t, 1, h.log.count("update topic payments"))

	// Zero keeps whatever window the topic has.
	require.Equal(t, bus.ChangeUnchanged, h.ensureTopic(t, bus.TopicSpec{Name: "payments"}))
	require.Len(t, h.admin.requests(), 2)
	require.Equal(t, bus.ChangeCreated, h.ensureTopic(t, bus.TopicSpec{Name: "billers"}))
	require.Equal(t, admin.TopicProperties{RequiresDuplicateDetection: ptr(true)}, h.admin.requests()[2])
}

func TestEnsureTopicWithoutDuplicateDetectionFails(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.admin.topics["legacy"] = admin.TopicProperties{RequiresDuplicateDetection: ptr(false)}
	change, err := h.b.EnsureTopic(t.Context(), bus.TopicSpec{Name: "legacy", DuplicateWindow: time.Minute})
	require.ErrorIs(t, err, ErrNoDuplicateDetection)
	require.Empty(t, change)
	require.ErrorContains(t, err, "legacy")
	require.ErrorContains(t, err, "only enable at creation")
	require.Empty(t, h.admin.requests(), "the topic is not touched")
}

func TestEnsureTopicRefusesWindowsServiceBusCannotKeep(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, w := range []time.Duration{time.Second, 19 * time.Second, 8 * 24 * time.Hour} {
		_, err := h.b.EnsureTopic(t.Context(), bus.TopicSpec{Name: "payments", DuplicateWindow: w})
		require.ErrorContains(t, err, "DuplicateWindow", "window %s", w)
	}
	require.Empty(t, h.log.snapshot(), "no management call")
}

func TestEnsureTopicCreatedConcurrently(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.admin.createConflict = true
	h.admin.conflictTopic = &admin.TopicProperties{RequiresDuplicateDetection: ptr(true), DuplicateDetectionHistoryTimeWindow: ptr("PT1M")}
	require.Equal(t, bus.ChangeUnchanged, h.ensureTopic(t, bus.TopicSpec{Name: "payments", DuplicateWindow: time.Minute}),
		"another process created it as specified")
	require.Equal(t, []string{"get topic payments", "create topic payments", "get topic payments"}, h.log.snapshot())

	h.admin.createConflict = true
	h.admin.conflictTopic = &admin.TopicProperties{RequiresDuplicateDetection: ptr(true), DuplicateDetectionHistoryTimeWindow: ptr("PT5M")}
	require.Equal(t, bus.ChangeUpdated, h.ensureTopic(t, bus.TopicSpec{Name: "window", DuplicateWindow: time.Minute}),
		"another process created it with another window")
	require.Equal(t, 1, h.log.count("update topic window"))

	h.admin.createConflict = true
	h.admin.conflictTopic = &admin.TopicProperties{}
	_, err := h.b.EnsureTopic(t.Context(), bus.TopicSpec{Name: "other", DuplicateWindow: time.Minute})
	require.ErrorIs(t, err, ErrNoDuplicateDetection, "the other process made it without duplicate detection")
}

func TestEnsureSubscriptionRequestsLockDeliveriesAndExpiry(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.admin.topics["payments"] = admin.TopicProperties{RequiresDuplicateDetection: ptr(true)}
	spec := bus.SubscriptionSpec{Topic: "payments", Name: "item-consumer", LockDuration: 45 * time.Second, MaxDeliveries: 5}
	require.Equal(t, bus.ChangeCreated, h.ensureSubscription(t, spec))
	require.Equal(t, []any{admin.SubscriptionProperties{
		LockDuration:                     ptr("PT0M45S"),
		MaxDeliveryCount:                 ptr(int32(6)), // MaxDeliveries + the reserved delivery
		DeadLetteringOnMessageExpiration: ptr(true),
	}}, h.admin.requests())

	require.Equal(t, bus.ChangeUnchanged, h.ensureSubscription(t, spec), "idempotent")
	require.Len(t, h.admin.requests(), 1)

	// The broker's own spelling of the same lock duration is the same.
	p := h.admin.subs["payments/item-consumer"]
	p.LockDuration = ptr("PT45S")
	p.EnableBatchedOperations = ptr(true)
	h.admin.subs["payments/item-consumer"] = p
	require.Equal(t, bus.ChangeUnchanged, h.ensureSubscription(t, spec))
	require.Len(t, h.admin.requests(), 1)

	spec.LockDuration = 5 * time.Minute
	spec.MaxDeliveries = 7
	require.Equal(t, bus.ChangeUpdated, h.ensureSubscription(t, spec))
	require.Equal(t, admin.SubscriptionProperties{
		LockDuration:                     ptr("PT5M0S"),
		MaxDeliveryCount:                 ptr(int32(8)),
		DeadLetteringOnMessageExpiration: ptr(true),
		EnableBatchedOperations:          ptr(true),
	}, h.admin.requests()[1], "update keeps the other settings")

	// Zero values take the defaults.
	require.Equal(t, bus.ChangeCreated, h.ensureSubscription(t, bus.SubscriptionSpec{Topic: "payments", Name: "defaults"}))
	require.Equal(t, admin.SubscriptionProperties{
		LockDuration:                     ptr("PT0M30S"),
		MaxDeliveryCount:                 ptr(int32(11)),
		DeadLetteringOnMessageExpiration: ptr(true),
	}, h.admin.requests()[2])
}

func TestEnsureSubscriptionRefusals(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.admin.topics["payments"] = admin.TopicProperties{RequiresDuplicateDetection: ptr(true)}
	for name, spec := range map[string]bus.SubscriptionSpec{
		"lock above 5 minutes": {Topic: "payments", Name: "s", LockDuration: 6 * time.Minute},
		"lock below 5 seconds": {Topic: "payments", Name: "s", LockDuration: time.Second},
		"negative deliveries":  {Topic: "payments", Name: "s", MaxDeliveries: -1},
		"no name":              {Topic: "payments"},
	} {
		_, err := h.b.EnsureSubscription(t.Context(), spec)
		require.Error(t, err, name)
	}
	require.Empty(t, h.log.snapshot(), "refused before any management call")

	_, err := h.b.EnsureSubscription(t.Context(), bus.SubscriptionSpec{Topic: "missing", Name: "s"})
	require.ErrorContains(t, err, "topic does not exist")

	h.admin.subs["payments/sessions"] = admin.SubscriptionProperties{RequiresSession: ptr(true)}
	_, err = h.b.EnsureSubscription(t.Context(), bus.SubscriptionSpec{Topic: "payments", Name: "sessions"})
	require.ErrorContains(t, err, "requires sessions")
}

func TestReceiveReadsMaxDeliveriesOfSubscription(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.admin.topics["items"] = admin.TopicProperties{RequiresDuplicateDetection: ptr(true)}
	h.ensureSubscription(t, bus.SubscriptionSpec{Topic: "items", Name: "consumer", LockDuration: 20 * time.Second, MaxDeliveries: 2})
	info, err := h.b.subscriptionInfo(t.Context(), "items", "consumer")
	require.NoError(t, err)
	require.Equal(t, subscriptionInfo{lock: 20 * time.Second, maxDeliveries: 2}, info)
}

func TestISODurations(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]time.Duration{
		"PT30S":                      30 * time.Second,
		"PT1M":                       time.Minute,
		"PT0M45S":                    45 * time.Second,
		"PT1H2M3S":                   time.Hour + 2*time.Minute + 3*time.Second,
		"P7D":                        7 * 24 * time.Hour,
		"PT1.5S":                     1500 * time.Millisecond,
		"P10675199DT2H48M5.4775807S": time.Duration(1<<63 - 1),
	} {
		got, err := parseISODuration(s)
		require.NoError(t, err, s)
		require.Equal(t, want, got, s)
	}
	for _, bad := range []string{"", "P", "PT", "30S", "PT-1S", "1m"} {
		_, err := parseISODuration(bad)
		require.Error(t, err, bad)
	}
	for _, d := range []time.Duration{5 * time.Second, time.Minute, 5 * time.Minute, 7 * 24 * time.Hour} {
		got, err := parseISODuration(durationISO(d))
		require.NoError(t, err)
		require.Equal(t, d, got, "round trip of %s", d)
	}
}
