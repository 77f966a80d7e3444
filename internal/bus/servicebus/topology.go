package servicebus

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/datapump/datapump/internal/bus"
)

// Service Bus limits and the adapter's defaults.
const (
	// MinLockDuration and MaxLockDuration bound a subscription's lock
	// duration in Service Bus. EnsureSubscription refuses a
	// SubscriptionSpec.LockDuration outside them rather than clamping it:
	// a shorter lock than asked for would lose messages to redelivery
	// without warning. Work longer than 5 minutes renews the lock
	// (ReceiveOptions.RenewEvery).
	MinLockDuration = 5 * time.Second
	MaxLockDuration = 5 * time.Minute
	// MinDuplicateWindow and MaxDuplicateWindow bound a topic's duplicate
	// detection history in Service Bus; EnsureTopic refuses a
	// TopicSpec.DuplicateWindow outside them (zero keeps the broker's
	// default of 10 minutes).
	MinDuplicateWindow = 20 * time.Second
	MaxDuplicateWindow = 7 * 24 * time.Hour

	defaultLockDuration  = 30 * time.Second
	defaultMaxDeliveries = 10
)

// ErrNoDuplicateDetection is returned by EnsureTopic for a topic that
// exists without duplicate detection: Service Bus can turn it on only when
// a topic is created.
var ErrNoDuplicateDetection = errors.New("topic exists without duplicate detection, which Service Bus can only enable at creation: delete and re-create the topic")

// EnsureTopic creates the topic with duplicate detection on
// (RequiresDuplicateDetection) and spec.DuplicateWindow as its history
// window, or updates an existing topic's window. An existing topic
// without duplicate detection is an error (ErrNoDuplicateDetection). It
// reports bus.ChangeCreated when it created the topic, bus.ChangeUpdated
// when it changed the window, and bus.ChangeUnchanged otherwise (also for
// a topic another process created meanwhile with the same window).
func (b *Bus) EnsureTopic(ctx context.Context, spec bus.TopicSpec) (bus.Change, error) {
	if err := b.checkOpen(); err != nil {
		return "", err
	}
	if spec.Name == "" {
		return "", errors.New("ensure topic: empty name")
	}
	if w := spec.DuplicateWindow; w != 0 && (w < MinDuplicateWindow || w > MaxDuplicateWindow) {
		return "", fmt.Errorf("ensure topic %s: DuplicateWindow %s is outside Service Bus's range of %s to %s", spec.Name, w, MinDuplicateWindow, MaxDuplicateWindow)
	}
	existing, err := b.admin.GetTopic(ctx, spec.Name, nil)
	if err != nil {
		return "", fmt.Errorf("ensure topic %s: %w", spec.Name, b.closedOr(err))
	}
	if existing == nil {
		props := admin.TopicProperties{RequiresDuplicateDetection: ptr(true)}
		if spec.DuplicateWindow != 0 {
			props.DuplicateDetectionHistoryTimeWindow = ptr(durationISO(spec.DuplicateWindow))
		}
		_, err := b.admin.CreateTopic(ctx, spec.Name, &admin.CreateTopicOptions{Properties: &props})
		if err == nil {
			return bus.ChangeCreated, nil
		}
		if httpStatus(err) != http.StatusConflict {
			return "", fmt.Errorf("ensure topic %s: create: %w", spec.Name, b.closedOr(err))
		}
		// Created concurrently by another process: check what it made.
		if existing, err = b.admin.GetTopic(ctx, spec.Name, nil); err != nil || existing == nil {
			return "", fmt.Errorf("ensure topic %s: read after conflict: %w", spec.Name, b.closedOr(errors.Join(err, errors.New("topic not found"))))
		}
	}
	if !deref(existing.RequiresDuplicateDetection) {
		return "", fmt.Errorf("ensure topic %s: %w", spec.Name, ErrNoDuplicateDetection)
	}
	if spec.DuplicateWindow == 0 {
		return bus.ChangeUnchanged, nil
	}
	current, err := parseISODuration(deref(existing.DuplicateDetectionHistoryTimeWindow))
	if err == nil && current == spec.DuplicateWindow.Truncate(time.Second) {
		return bus.ChangeUnchanged, nil
	}
	props := existing.TopicProperties
	props.DuplicateDetectionHistoryTimeWindow = ptr(durationISO(spec.DuplicateWindow))
	if _, err := b.admin.UpdateTopic(ctx, spec.Name, props, nil); err != nil {
		return "", fmt.Errorf("ensure topic %s: update duplicate window: %w", spec.Name, b.closedOr(err))
	}
	return bus.ChangeUpdated, nil
}

// EnsureSubscription creates the subscription on an existing topic, or
// updates it, with LockDuration (30s when zero, whole seconds), dead-
// lettering on message expiration, and MaxDeliveryCount one higher than
// spec.MaxDeliveries (10 when zero): the extra delivery is reserved for
// the adapter to dead-letter a message whose lock expired on its last
// allowed delivery (see the package doc). It reports what it did like
// EnsureTopic; a subscription that already has these settings is not
// written to.
func (b *Bus) EnsureSubscription(ctx context.Context, spec bus.SubscriptionSpec) (bus.Change, error) {
	if err := b.checkOpen(); err != nil {
		return "", err
	}
	if spec.Topic == "" || spec.Name == "" {
		return "", fmt.Errorf("ensure subscription %q on %q: empty topic or subscription name", spec.Name, spec.Topic)
	}
	want, err := subscriptionWant(spec)
	if err != nil {
		return "", fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, err)
	}
	existing, err := b.admin.GetSubscription(ctx, spec.Topic, spec.Name, nil)
	if err != nil {
		return "", fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, b.closedOr(err))
	}
	if existing == nil {
		props := want.properties()
		_, err := b.admin.CreateSubscription(ctx, spec.Topic, spec.Name, &admin.CreateSubscriptionOptions{Properties: &props})
		switch status := httpStatus(err); {
		case err == nil:
			return bus.ChangeCreated, nil
		case status == http.StatusNotFound:
			return "", fmt.Errorf("ensure subscription %s/%s: topic does not exist: %w", spec.Topic, spec.Name, err)
		case status != http.StatusConflict:
			return "", fmt.Errorf("ensure subscription %s/%s: create: %w", spec.Topic, spec.Name, b.closedOr(err))
		}
		if existing, err = b.admin.GetSubscription(ctx, spec.Topic, spec.Name, nil); err != nil || existing == nil {
			return "", fmt.Errorf("ensure subscription %s/%s: read after conflict: %w", spec.Topic, spec.Name, b.closedOr(errors.Join(err, errors.New("subscription not found"))))
		}
	}
	if deref(existing.RequiresSession) {
		return "", fmt.Errorf("ensure subscription %s/%s: the subscription requires sessions, which this adapter does not use", spec.Topic, spec.Name)
	}
	if want.matches(existing.SubscriptionProperties) {
		return bus.ChangeUnchanged, nil
	}
	props := existing.SubscriptionProperties
	props.LockDuration = ptr(durationISO(want.lock))
	props.MaxDeliveryCount = ptr(want.brokerMaxDeliveries())
	props.DeadLetteringOnMessageExpiration = ptr(true)
	if _, err := b.admin.UpdateSubscription(ctx, spec.Topic, spec.Name, props, nil); err != nil {
		return "", fmt.Errorf("ensure subscription %s/%s: update: %w", spec.Topic, spec.Name, b.closedOr(err))
	}
	return bus.ChangeUpdated, nil
}

// subscriptionSettings are the settings EnsureSubscription manages.
type subscriptionSettings struct {
	lock          time.Duration
	maxDeliveries int
}

func subscriptionWant(spec bus.SubscriptionSpec) (subscriptionSettings, error) {
	s := subscriptionSettings{lock: spec.LockDuration.Truncate(time.Second), maxDeliveries: spec.MaxDeliveries}
	if spec.LockDuration == 0 {
		s.lock = defaultLockDuration
	}
	if s.lock < MinLockDuration || s.lock > MaxLockDuration {
		return s, fmt.Errorf("LockDuration %s is outside Service Bus's range of %s to %s (renew locks for longer work)", spec.LockDuration, MinLockDuration, MaxLockDuration)
	}
	if s.maxDeliveries < 0 {
		return s, fmt.Errorf("negative MaxDeliveries %d", spec.MaxDeliveries)
	}
	if s.maxDeliveries == 0 {
		s.maxDeliveries = defaultMaxDeliveries
	}
	if s.maxDeliveries >= 1<<31-1 {
		return s, fmt.Errorf("MaxDeliveries %d is too large", spec.MaxDeliveries)
	}
	return s, nil
}

// brokerMaxDeliveries is the subscription's MaxDeliveryCount: one
// delivery more than the port allows.
func (s subscriptionSettings) brokerMaxDeliveries() int32 {
	return int32(s.maxDeliveries + 1)
}

// properties are the settings of a new subscription.
func (s subscriptionSettings) properties() admin.SubscriptionProperties {
	return admin.SubscriptionProperties{
		LockDuration:                     ptr(durationISO(s.lock)),
		MaxDeliveryCount:                 ptr(s.brokerMaxDeliveries()),
		DeadLetteringOnMessageExpiration: ptr(true),
	}
}

// matches reports whether an existing subscription has these settings.
func (s subscriptionSettings) matches(p admin.SubscriptionProperties) bool {
	lock, err := parseISODuration(deref(p.LockDuration))
	return err == nil && lock == s.lock &&
		deref(p.MaxDeliveryCount) == s.brokerMaxDeliveries() &&
		deref(p.DeadLetteringOnMessageExpiration)
}

// subscriptionInfo is what Receive needs to know about a subscription.
type subscriptionInfo struct {
	lock time.Duration
	// maxDeliveries is the port's limit: the broker's MaxDeliveryCount
	// minus the reserved delivery.
	maxDeliveries int
}

// subscriptionInfo reads the subscription's settings; a missing
// subscription is an error.
func (b *Bus) subscriptionInfo(ctx context.Context, topic, subscription string) (subscriptionInfo, error) {
	var info subscriptionInfo
	if topic == "" || subscription == "" {
		return info, errors.New("empty topic or subscription name")
	}
	sub, err := b.admin.GetSubscription(ctx, topic, subscription, nil)
	if err != nil {
		return info, fmt.Errorf("read subscription: %w", b.closedOr(err))
	}
	if sub == nil {
		return info, errors.New("subscription does not exist")
	}
	info.lock, err = parseISODuration(deref(sub.LockDuration))
	if err != nil || info.lock <= 0 {
		info.lock = time.Minute // the broker's default
	}
	if n := int(deref(sub.MaxDeliveryCount)); n > 0 {
		info.maxDeliveries = max(n-1, 1)
	}
	return info, nil
}

// isoDuration matches the ISO 8601 durations the management API returns
// (PT30S, PT1M, P7D, P10675199DT2H48M5.4775807S).
var isoDuration = regexp.MustCompile(`^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$`)

// parseISODuration parses a duration the management API returned.
func parseISODuration(s string) (time.Duration, error) {
	m := isoDuration.FindStringSubmatch(s)
	if m == nil || s == "P" || s == "PT" {
		return 0, fmt.Errorf("not an ISO 8601 duration: %q", s)
	}
	var d float64
	for i, unit := range []time.Duration{24 * time.Hour, time.Hour, time.Minute, time.Second} {
		if m[i+1] == "" {
			continue
		}
		v, err := strconv.ParseFloat(m[i+1], 64)
		if err != nil {
			return 0, fmt.Errorf("not an ISO 8601 duration: %q", s)
		}
		d += v * float64(unit)
	}
	if d >= float64(1<<63-1) {
		return time.Duration(1<<63 - 1), nil
	}
	return time.Duration(d).Round(time.Millisecond), nil
}

func ptr[T any](v T) *T { return &v }
