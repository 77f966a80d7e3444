package bus

import "context"

// WithTopicPrefix returns a Bus that puts prefix in front of every topic
// name, so several environments (or parallel tests) can share one broker.
// An empty prefix returns b itself.
func WithTopicPrefix(b Bus, prefix string) Bus {
	if prefix == "" {
		return b
	}
	return prefixed{Bus: b, prefix: prefix}
}

type prefixed struct {
	Bus
	prefix string
}

func (p prefixed) EnsureTopic(ctx context.Context, spec TopicSpec) (Change, error) {
	spec.Name = p.prefix + spec.Name
	return p.Bus.EnsureTopic(ctx, spec)
}

func (p prefixed) EnsureSubscription(ctx context.Context, spec SubscriptionSpec) (Change, error) {
	spec.Topic = p.prefix + spec.Topic
	return p.Bus.EnsureSubscription(ctx, spec)
}

func (p prefixed) Publish(ctx context.Context, topic string, msgs ...Message) (PublishResult, error) {
	return p.Bus.Publish(ctx, p.prefix+topic, msgs...)
}

func (p prefixed) Receive(ctx context.Context, topic, subscription string, opts ReceiveOptions, h Handler) error {
	return p.Bus.Receive(ctx, p.prefix+topic, subscription, opts, func(ctx context.Context, d *Delivery) {
		d.Topic = topic
		h(ctx, d)
	})
}

func (p prefixed) DeadLetters(ctx context.Context, topic, subscription string, max int) ([]DeadLetter, error) {
	dls, err := p.Bus.DeadLetters(ctx, p.prefix+topic, subscription, max)
	for i := range dls {
		dls[i].Topic = topic
	}
	return dls, err
}
