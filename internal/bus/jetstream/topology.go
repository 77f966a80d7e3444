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

// EnsureTopic creates the topic's stream, or updates it when a setting the
// adapter manages (subjects, retention, storage, duplicate window, replicas,
// description) differs from what it would set; a stream that already has
// them all is left alone (bus.ChangeUnchanged). It fails when the stream
// name is taken by a stream with other subjects (two topic names that
// sanitise to the same stream name).
func (b *Bus) EnsureTopic(ctx context.Context, spec bus.TopicSpec) (bus.Change, error) {
	if err := b.checkOpen(); err != nil {
		return "", err
	}
	if err := validateTopic(spec.Name); err != nil {
		return "", fmt.Errorf("ensure topic: %w", err)
	}
	name := streamName(spec.Name)
	cfg := jetstream.StreamConfig{
		Name:        name,
		Description: "datapump topic " + spec.Name,
		Subjects:    []string{spec.Name},
		Retention:   jetstream.InterestPolicy,
		Storage:     jetstream.FileStorage,
		Duplicates:  spec.DuplicateWindow,
		Replicas:    b.replicas,
	}
	change := bus.ChangeCreated
	existing, err := b.js.Stream(ctx, name)
	switch {
	case err == nil:
		current := existing.CachedInfo().Config
		if !slices.Equal(current.Subjects, []string{spec.Name}) {
			return "", fmt.Errorf("ensure topic %s: stream %s already exists with subjects %v", spec.Name, name, current.Subjects)
		}
		if streamMatches(current, cfg) {
			return bus.ChangeUnchanged, nil
		}
		change = bus.ChangeUpdated
	case errors.Is(err, jetstream.ErrStreamNotFound):
	default:
		return "", fmt.Errorf("ensure topic %s: %w", spec.Name, b.closedOr(err))
	}
	if _, err := b.js.CreateOrUpdateStream(ctx, cfg); err != nil {
		return "", fmt.Errorf("ensure topic %s: %w", spec.Name, b.closedOr(err))
	}
	return change, nil
}

// serverDefaultDuplicates is the window the server gives a stream created
// with a zero Duplicates (when no account limit or MaxAge lowers it).
const serverDefaultDuplicates = 2 * time.Minute

// streamMatches reports whether an existing stream already has every
// setting EnsureTopic manages as want has it.
func streamMatches(have, want jetstream.StreamConfig) bool {
	duplicates := want.Duplicates
	if duplicates == 0 {
		duplicates = serverDefaultDuplicates
	}
	return slices.Equal(have.Subjects, want.Subjects) &&
		have.Retention == want.Retention &&
		have.Storage == want.Storage &&
		have.Duplicates == duplicates &&
		have.Replicas == want.Replicas &&
		have.Description == want.Description
}

// EnsureSubscription creates the subscription's durable consumer (the
// topic must exist), or updates it when a setting the adapter manages (ack
// policy, ack wait, max deliver, filter subject, description, deliver
// policy, replicas) differs; a consumer that already has them all is left
// alone (bus.ChangeUnchanged). Either way it then ensures the shared
// dead-letter stream, which is not part of the reported change.
func (b *Bus) EnsureSubscription(ctx context.Context, spec bus.SubscriptionSpec) (bus.Change, error) {
	if err := b.checkOpen(); err != nil {
		return "", err
	}
	if err := validateTopic(spec.Topic); err != nil {
		return "", fmt.Errorf("ensure subscription: %w", err)
	}
	if err := validateSubscription(spec.Name); err != nil {
		return "", fmt.Errorf("ensure subscription on %s: %w", spec.Topic, err)
	}
	if spec.MaxDeliveries < 0 || spec.LockDuration < 0 {
		return "", fmt.Errorf("ensure subscription %s/%s: negative MaxDeliveries or LockDuration", spec.Topic, spec.Name)
	}
	stream, consumer := streamName(spec.Topic), consumerName(spec.Name)

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

	change := bus.ChangeCreated
	existing, err := b.js.Consumer(ctx, stream, consumer)
	switch {
	case err == nil:
		current := existing.CachedInfo().Config
		if current.Description != spec.Name {
			return "", fmt.Errorf("ensure subscription %s/%s: consumer %s already belongs to subscription %q", spec.Topic, spec.Name, consumer, current.Description)
		}
		change = bus.ChangeUpdated
		if consumerMatches(current, cfg) {
			change = bus.ChangeUnchanged
		}
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return "", fmt.Errorf("ensure subscription %s/%s: topic does not exist: %w", spec.Topic, spec.Name, err)
	default:
		return "", fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, b.closedOr(err))
	}
	if change != bus.ChangeUnchanged {
		if _, err := b.js.CreateOrUpdateConsumer(ctx, stream, cfg); err != nil {
			return "", fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, b.closedOr(err))
		}
	}
	if err := b.ensureDeadLetterStream(ctx); err != nil {
		return "", fmt.Errorf("ensure subscription %s/%s: %w", spec.Topic, spec.Name, err)
	}
	return change, nil
}

// consumerMatches reports whether an existing consumer already has every
// setting EnsureSubscription manages as want has it.
func consumerMatches(have, want jetstream.ConsumerConfig) bool {
	return have.AckPolicy == want.AckPolicy &&
		have.AckWait == want.AckWait &&
		have.MaxDeliver == want.MaxDeliver &&
		have.FilterSubject == want.FilterSubject &&
		len(have.FilterSubjects) == 0 &&
		have.Description == want.Description &&
		have.DeliverPolicy == want.DeliverPolicy &&
		have.Replicas == want.Replicas
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
