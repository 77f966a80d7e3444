package pump

import (
	"context"

	"go.opentelemetry.io/otel/propagation"

	"github.com/datapump/datapump/internal/bus"
)

// traceContext carries W3C traceparent/tracestate in message properties.
var traceContext = propagation.TraceContext{}

// injectTrace writes ctx's span context into the message's properties.
func injectTrace(ctx context.Context, m *bus.Message) {
	if m.Properties == nil {
		m.Properties = map[string]string{}
	}
	traceContext.Inject(ctx, propagation.MapCarrier(m.Properties))
}

// extractTrace returns ctx carrying the remote span context of d, if any.
func extractTrace(ctx context.Context, d *bus.Delivery) context.Context {
	if d.Properties == nil {
		return ctx
	}
	return traceContext.Extract(ctx, propagation.MapCarrier(d.Properties))
}
