package charttest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const (
	dashboardFile = "../grafana/datapump.json"
	metricsSource = "../../internal/telemetry/metrics.go"
)

// Labels every series gets from the scrape (Prometheus Operator target
// labels), besides a metric's own.
var targetLabels = []string{"namespace", "pod", "job", "instance", "service"}

// metricDef is one metric as internal/telemetry/metrics.go defines it.
type metricDef struct {
	histogram bool
	labels    []string
}

// readMetricDefs reads the metric names, kinds and label names from the
// product's source, so the dashboard is checked against the code itself.
func readMetricDefs(t *testing.T) map[string]metricDef {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, metricsSource, nil, 0)
	require.NoError(t, err)

	consts := map[string]string{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					v, err := strconv.Unquote(lit.Value)
					require.NoError(t, err)
					consts[name.Name] = v
				}
			}
		}
	}

	defs := map[string]metricDef{}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !strings.HasPrefix(sel.Sel.Name, "New") || len(call.Args) == 0 {
			return true
		}
		opts, ok := call.Args[0].(*ast.CompositeLit)
		if !ok {
			return true
		}
		optsType, ok := opts.Type.(*ast.SelectorExpr)
		if !ok || !strings.HasSuffix(optsType.Sel.Name, "Opts") {
			return true
		}
		var def metricDef
		var name string
		def.histogram = optsType.Sel.Name == "HistogramOpts"
		for _, elt := range opts.Elts {
			kv, ok := elt.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			if key, ok := kv.Key.(*ast.Ident); ok && key.Name == "Name" {
				if id, ok := kv.Value.(*ast.Ident); ok {
					name = consts[id.Name]
				}
			}
		}
		if len(call.Args) > 1 {
			if labels, ok := call.Args[1].(*ast.CompositeLit); ok {
				for _, e := range labels.Elts {
					if lit, ok := e.(*ast.BasicLit); ok {
						v, err := strconv.Unquote(lit.Value)
						require.NoError(t, err)
						def.labels = append(def.labels, v)
					}
				}
			}
		}
		if name != "" {
			defs[name] = def
		}
		return true
	})
	require.NotEmpty(t, defs, "no metric definitions found in %s", metricsSource)
	for c, v := range consts {
		if strings.HasPrefix(c, "Metric") {
			require.Contains(t, defs, v, "%s (%s) is named but never defined", c, v)
		}
	}
	return defs
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

var (
	metricRef  = regexp.MustCompile(`\bdatapump_[a-z0-9_]+`)
	groupingRe = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	selectorRe = regexp.MustCompile(`\{([^}]*)\}`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
)

// TestDashboardUsesDefinedMetrics checks every query of the Grafana
// dashboard against internal/telemetry/metrics.go: metric names exist,
// _bucket/_sum/_count only on histograms, histogram_quantile only over
// _bucket, grouping and matchers only on labels the metrics have, and
// every defined metric is shown somewhere.
func TestDashboardUsesDefinedMetrics(t *testing.T) {
	t.Parallel()
	defs := readMetricDefs(t)

	raw, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(raw, &d))
	require.Equal(t, "datapump", d.UID)

	var exprs []string
	ids := map[int]string{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			prev, dup := ids[p.ID]
			require.False(t, dup, "panel id %d used by %q and %q", p.ID, prev, p.Title)
			ids[p.ID] = p.Title
			if p.Type != "row" {
				require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
				require.NotNil(t, p.Datasource, "panel %q has no datasource", p.Title)
				require.Equal(t, "${datasource}", p.Datasource.UID, "panel %q datasource", p.Title)
			}
			for _, tg := range p.Targets {
				require.NotEmpty(t, tg.Expr, "panel %q has an empty query", p.Title)
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			if s, ok := q["query"].(string); ok {
				exprs = append(exprs, s)
			}
		}
	}
	require.NotEmpty(t, exprs)

	used := map[string]bool{}
	for _, expr := range exprs {
		allowed := slices.Clone(targetLabels)
		for _, ref := range metricRef.FindAllString(expr, -1) {
			name, suffix := ref, ""
			if _, ok := defs[ref]; !ok {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(ref, s); ok {
						name, suffix = base, s
					}
				}
			}
			def, ok := defs[name]
			require.True(t, ok, "%s is not a metric of %s (query %q)", ref, metricsSource, expr)
			if suffix != "" {
				require.True(t, def.histogram, "%s: %s is not a histogram (query %q)", ref, name, expr)
			} else {
				require.False(t, def.histogram, "%s is a histogram: query its _bucket, _sum or _count (query %q)", ref, expr)
			}
			if suffix == "_bucket" {
				require.Contains(t, expr, "histogram_quantile(", "%s outside histogram_quantile (query %q)", ref, expr)
				allowed = append(allowed, "le")
			}
			used[name] = true
			allowed = append(allowed, def.labels...)
		}
		if strings.Contains(expr, "histogram_quantile(") {
			require.Contains(t, expr, "_bucket", "histogram_quantile without _bucket (query %q)", expr)
		}
		var labelsUsed []string
		for _, g := range groupingRe.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); l != "" {
					labelsUsed = append(labelsUsed, l)
				}
			}
		}
		for _, sel := range selectorRe.FindAllStringSubmatch(expr, -1) {
			for _, m := range matcherRe.FindAllStringSubmatch(sel[1], -1) {
				labelsUsed = append(labelsUsed, m[1])
			}
		}
		for _, l := range labelsUsed {
			require.Contains(t, allowed, l, "label %q is not on the metrics of query %q", l, expr)
		}
	}
	for name := range defs {
		require.True(t, used[name], "metric %s is on no panel", name)
	}
}
