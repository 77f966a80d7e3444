package app_test

import (
	"log/slog"
	"os"
	"testing"
)

// testLogger logs to the test output when DATAPUMP_TEST_VERBOSE is set.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("DATAPUMP_TEST_VERBOSE") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
