package cis

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"
)

// billerState is what the client keeps per biller: rate limiter, in-flight
// cap, circuit breaker and OAuth2 token cache.
type billerState struct {
	limiter *rate.Limiter // nil when unlimited
	breaker *gobreaker.CircuitBreaker[struct{}]

	mu       sync.Mutex
	rateSet  float64
	sem      chan struct{}
	tokens   *tokenCache
	tokenCfg tokenConfig
}

// biller returns the state for id, created on first use and brought up to
// date with the endpoint's limits (a catalog change takes effect at once).
func (c *Client) biller(id string, ratePerSecond float64, maxConcurrent int) *billerState {
	c.mu.Lock()
	b, ok := c.billers[id]
	if !ok {
		b = &billerState{breaker: c.newBreaker(id)}
		c.billers[id] = b
	}
	c.mu.Unlock()

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sem == nil || cap(b.sem) != maxConcurrent {
		// Requests holding a slot of the old semaphore release into it.
		b.sem = make(chan struct{}, maxConcurrent)
	}
	if ratePerSecond != b.rateSet || (ratePerSecond > 0 && b.limiter == nil) {
		b.rateSet = ratePerSecond
		if ratePerSecond <= 0 {
			b.limiter = nil
		} else {
			burst := max(1, int(math.Ceil(ratePerSecond)))
			b.limiter = rate.NewLimiter(rate.Limit(ratePerSecond), burst)
		}
	}
	return b
}

func (c *Client) newBreaker(id string) *gobreaker.CircuitBreaker[struct{}] {
	failures := uint32(c.cfg.BreakerFailures)
	logger := c.log
	return gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        id,
		MaxRequests: 1,
		Timeout:     c.cfg.BreakerOpenFor,
		ReadyToTrip: func(counts gobreaker.Counts) bool {
			return counts.ConsecutiveFailures >= failures
		},
		// A permanent answer (4xx) proves the CIS is up: it counts as a success.
		IsSuccessful: func(err error) bool { return err == nil || IsPermanent(err) },
		IsExcluded: func(err error) bool {
			var e *Error
			return errors.As(err, &e) && e.noTrip
		},
		OnStateChange: func(name string, from, to gobreaker.State) {
			logger.Warn("cis circuit breaker state changed",
				slog.String("biller", name), slog.String("from", from.String()), slog.String("to", to.String()))
		},
	})
}

// acquire takes an in-flight slot and returns the function that frees it.
func (b *billerState) acquire(ctx context.Context) (func(), error) {
	b.mu.Lock()
	sem := b.sem
	b.mu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// wait blocks until the biller's rate limit lets one more request go.
func (b *billerState) wait(ctx context.Context) error {
	b.mu.Lock()
	lim := b.limiter
	b.mu.Unlock()
	if lim == nil {
		return nil
	}
	return lim.Wait(ctx)
}

// BreakerState returns the state of a biller's circuit breaker: "closed",
// "half-open" or "open" ("closed" for a biller never called).
func (c *Client) BreakerState(billerID string) string {
	c.mu.Lock()
	b, ok := c.billers[billerID]
	c.mu.Unlock()
	if !ok {
		return gobreaker.StateClosed.String()
	}
	return b.breaker.State().String()
}
