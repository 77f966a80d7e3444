// Package service gives background loops one lifecycle: Start(ctx) launches
// the loop, Stop() cancels it and blocks until it has returned. Stop is
// idempotent and safe before Start.
package service

import (
	"context"
	"errors"
	"sync"
)

// ErrStarted is returned by Start on a service that is already running.
var ErrStarted = errors.New("service already started")

// Loop runs one function in the background, owned by Start and Stop.
type Loop struct {
	mu      sync.Mutex
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	running bool
}

// Start runs fn in a goroutine with a context that Stop cancels.
func (l *Loop) Start(ctx context.Context, fn func(ctx context.Context) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running {
		return ErrStarted
	}
	ctx, cancel := context.WithCancel(ctx)
	l.cancel = cancel
	l.done = make(chan struct{})
	l.running = true
	l.err = nil
	go func(done chan struct{}) {
		defer close(done)
		err := fn(ctx)
		l.mu.Lock()
		l.err = err
		l.mu.Unlock()
	}(l.done)
	return nil
}

// Stop cancels the loop and waits for it to return. It returns the loop's
// error, if it ended with one other than context cancellation.
func (l *Loop) Stop() error {
	l.mu.Lock()
	if !l.running {
		err := l.err
		l.mu.Unlock()
		return err
	}
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	cancel()
	<-done
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running = false
	if errors.Is(l.err, context.Canceled) {
		l.err = nil
	}
	return l.err
}

// Done returns a channel closed when the loop has returned (nil before Start).
func (l *Loop) Done() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.done
}
