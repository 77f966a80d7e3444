// Package charttest renders the Helm chart in deploy/helm/datapump with the
// Helm SDK (no cluster, no helm binary) and checks the result: every
// document decodes strictly into its Kubernetes, KEDA or Prometheus
// Operator type, the two scaling points follow the values, and every
// container has probes, limits and a non-root security context.
//
// It is a module of its own so that Helm's and KEDA's dependencies stay out
// of the product's go.mod. Run it with:
//
//	cd deploy/charttest && go test ./...
package charttest
