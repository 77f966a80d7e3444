package telemetry

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// TracingConfig says where traces go.
type TracingConfig struct {
	// OTLPEndpoint is host:port of an OTLP/HTTP collector; empty disables tracing.
	OTLPEndpoint string
	// Insecure uses plain HTTP to the collector.
	Insecure bool
	// SampleRatio is the share of new traces recorded (parent-based).
	SampleRatio float64
	// ServiceName names this process in traces.
	ServiceName string
}

// NewTracerProvider returns an OTLP-exporting provider, or a no-op one when
// no endpoint is configured, and a shutdown function that flushes spans.
func NewTracerProvider(ctx context.Context, cfg TracingConfig) (trace.TracerProvider, func(context.Context) error, error) {
	if cfg.OTLPEndpoint == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(cfg.OTLPEndpoint)}
	if cfg.Insecure {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("otlp exporter: %w", err)
	}
	name := cfg.ServiceName
	if name == "" {
		name = "datapump"
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(name))),
	)
	return tp, tp.Shutdown, nil
}
