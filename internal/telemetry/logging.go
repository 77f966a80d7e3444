// Package telemetry builds the pump's structured logger (and, later, its
// metrics and traces).
package telemetry

import (
	"fmt"
	"io"
	"log/slog"
)

// NewLogger returns a slog logger writing level and above to w as JSON or text.
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json", "":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log.format: %q is not one of json, text", format)
}
