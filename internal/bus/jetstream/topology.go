package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/datapump/datapump/internal/bus"
)

// Defaults for zero values in the specs.
const (
	defaultLockDuration  = 30 * time.Second
	defaultMaxDeliveries = 10
	// deadLetterDuplicates is how long the dead-letter stream remembers the
	// deterministic IDs that make dead-lettering idempotent.
	deadLetterDuplicates = 10 * time.Minute
)

// EnsureTopic creates the topic's stream, or updates its duplicate window.
// It fails when the stream name is taken by a stream with other subjects
// (two topic names that sanitise to the same stream name).
func (b *Bus) EnsureTopic(ctx context.Context, spec bus.TopicSpec) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if err := validateTopic(spec.Name); err != nil {
		return fmt.Errorf("ensure topic: %w", err)
	}
	name := streamName(spec.Name)
	existing, err := b.js.Stream(ctx, name)
	switch {
	case err == nil:
		if subjects := existing.CachedInfo().Config.Subjects; !slices.Equal(subjects, []string{spec.Name}) {
			return fmt.Errorf("ensure topic %s: stream %s already exists with subjects %v", spec.Name, name, subjects)
		}
	case errors.Is(err, jetstream.ErrStreamNotFound):
	default:
		return fmt.Errorf("ensure topic %s: %w", spec.Name, b.closedOr(err))
	}
	cfg := jetstream.StreamConfig{
		Name:        name,
		Description: "datapump topic " + spec.Name,
		Subjects:    []string{spec.Name},
		Retention:   jetstream.InterestPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  spec.DuplicateWindow,
		Replicas:    b.replicas,
	}
	if _, err := b.js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("ensure topic %s: %w", spec.Name, b.closedOr(err))
	}
	return nil
}

// EnsureSubscription creates or updates the subscription's durable
// consumer (the topic must exist) and the dead-letter stream.
func (b *Bus) EnsureSubscription(ctx context.Context, spec bus.SubscriptionSpec) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if err := validateTopic(spec.Topic); err != nil {
		return fmt.Errorf("ensure subscription: %w", err)
	}
	if err := validateSubscription(spec.Name); err != nil {
		return fmt.Errorf("ensure subscription on %s: %w", spec.Topic, err)
	}
	if spec.MaxDeliveries < 0 || spec.LockDuration < 0 {
		return fmt.Errorf("ensure subscription %s/%s: negative MaxDeliveries or LockDuration", spec.Topic, spec.Name)
	}
	stream, consumer := streamName(spec.Topic), consumerName(spec.Name)
	existing, err := b.js.Consumer(ctx, stream, consumer)
	switch {
	case err == nil:
		if desc := existing.CachedInfo().Config.Description; desc != spec.Name {
			return fmt.Errorf("ensure subscription %s/%s: consumer %s already belongs to subscription %q", spec.Topic, spec.Name, consumer, desc)
		}
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("ensure subscription %s/%s: topic does not exist: %w", spec.Topic, spec.Name, err)
	default:
		return fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, b.closedOr(err))
	}

	lock := spec.LockDuration
	if lock == 0 {
		lock = defaultLockDuration
	}
	maxDeliveries := spec.MaxDeliveries
	if maxDeliveries == 0 {
		maxDeliveries = defaultMaxDeliveries
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       consumer,
		Description:   spec.Name,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       lock,
		// One delivery more than the port allows: the reserved one is
		// dead-lettered by the receive loop (see the package doc).
		MaxDeliver:    maxDeliveries + 1,
		FilterSubject: spec.Topic,
		Replicas:      b.replicas,
	}
	if _, err := b.js.CreateOrUpdateConsumer(ctx, stream, cfg); err != nil {
		return fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, b.closedOr(err))
	}
	if err := b.ensureDeadLetterStream(ctx); err != nil {
		return fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, err)
	}
	return nil
}

// ensureDeadLetterStream creates or updates the shared dead-letter stream.
func (b *Bus) ensureDeadLetterStream(ctx context.Context) error {
	cfg := jetstream.StreamConfig{
		Name:        deadLetterStream,
		Description: "datapump dead letters, subject dlq.<stream>.<consumer>",
		Subjects:    []string{deadLetterPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  deadLetterDuplicates,
		Replicas:    b.replicas,
	}
	var err error
	// Concurrent provisioning races between "update: not found" and
	// "create: already exists"; a retry settles it.
	for range 3 {
		if _, err = b.js.CreateOrUpdateStream(ctx, cfg); err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			break
		}
	}
	return fmt.Errorf("ensure dead-letter stream: %w", b.closedOr(err))
}
