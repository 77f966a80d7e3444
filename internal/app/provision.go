package app

import (
	"context"
	"fmt"

	"github.com/datapump/datapump/internal/bus"
	"github.com/datapump/datapump/internal/config"
	"github.com/datapump/datapump/internal/items"
	"github.com/datapump/datapump/internal/pump"
)

// Plan is the topology every job needs: the biller topic with the biller
// consumer's subscription, and one topic per item type with the item
// consumer's subscription.
type Plan struct {
	Topics        []bus.TopicSpec
	Subscriptions []bus.SubscriptionSpec
}

// ProvisionPlan derives the topology from the configuration alone.
func ProvisionPlan(cfg config.Config) (Plan, error) {
	reg, err := cfg.Registry()
	if err != nil {
		return Plan{}, err
	}
	var p Plan
	add := func(topic, sub string) {
		p.Topics = append(p.Topics, bus.TopicSpec{Name: topic, DuplicateWindow: cfg.Bus.DuplicateWindow})
		p.Subscriptions = append(p.Subscriptions, bus.SubscriptionSpec{
			Topic: topic, Name: sub, LockDuration: cfg.Bus.LockDuration, MaxDeliveries: cfg.Bus.MaxDeliveries,
		})
	}
	add(items.BillerTopic, pump.BillerSubscription)
	for _, t := range reg.Types() {
		add(t.Topic, pump.ItemSubscription)
	}
	return p, nil
}

// ProvisionResult is what provisioning did to one topic or subscription.
type ProvisionResult struct {
	Kind   string     `json:"kind"` // topic or subscription
	Name   string     `json:"name"`
	Change bus.Change `json:"change"`
}

// Provision creates or updates the topics and subscriptions; idempotent.
func (a *App) Provision(ctx context.Context) ([]ProvisionResult, error) {
	plan, err := ProvisionPlan(a.Config)
	if err != nil {
		return nil, err
	}
	var out []ProvisionResult
	for _, t := range plan.Topics {
		ch, err := a.Bus.EnsureTopic(ctx, t)
		if err != nil {
			return out, fmt.Errorf("provision topic %s: %w", t.Name, err)
		}
		out = append(out, ProvisionResult{Kind: "topic", Name: t.Name, Change: ch})
	}
	for _, s := range plan.Subscriptions {
		ch, err := a.Bus.EnsureSubscription(ctx, s)
		if err != nil {
			return out, fmt.Errorf("provision subscription %s/%s: %w", s.Topic, s.Name, err)
		}
		out = append(out, ProvisionResult{Kind: "subscription", Name: s.Topic + "/" + s.Name, Change: ch})
	}
	return out, nil
}
