package telemetry

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

var seriesName = regexp.MustCompile(`\bdatapump_[a-z0-9_]+\b`)

// Every metric the Grafana dashboard queries is one the binary exports.
func TestDashboardQueriesOnlyExportedMetrics(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../deploy/grafana/datapump.json")
	require.NoError(t, err)
	var dash any
	require.NoError(t, json.Unmarshal(raw, &dash))
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && (k == "expr" || k == "query") {
					exprs = append(exprs, s)
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(dash)
	require.NotEmpty(t, exprs, "the dashboard has no queries")
	exported := NewMetrics().Exported()
	require.True(t, exported[MetricItems])
	require.True(t, exported[MetricEndToEndLatency+"_bucket"])
	queried := map[string]bool{}
	for _, e := range exprs {
		for _, name := range seriesName.FindAllString(e, -1) {
			queried[name] = true
			require.True(t, exported[name], "dashboard queries %s, which the binary does not export (in %q)", name, e)
		}
	}
	require.NotEmpty(t, queried)
}
