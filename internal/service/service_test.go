package service

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoopStartStop(t *testing.T) {
	t.Parallel()
	var l Loop
	require.NoError(t, l.Stop(), "stop before start is a no-op")
	started := make(chan struct{})
	require.NoError(t, l.Start(context.Background(), func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}))
	require.ErrorIs(t, l.Start(context.Background(), func(context.Context) error { return nil }), ErrStarted)
	<-started
	require.NoError(t, l.Stop())
	require.NoError(t, l.Stop(), "second stop is a no-op")
	select {
	case <-l.Done():
	default:
		t.Fatal("done channel not closed after Stop")
	}
}

func TestLoopReportsError(t *testing.T) {
	t.Parallel()
	var l Loop
	boom := errors.New("boom")
	require.NoError(t, l.Start(context.Background(), func(context.Context) error { return boom }))
	<-l.Done()
	require.ErrorIs(t, l.Stop(), boom)
}
