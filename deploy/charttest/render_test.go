package charttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/getter"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// Paths, relative to this package.
const (
	chartDir          = "../helm/datapump"
	twoItemTypesFile  = "../helm/datapump/ci/two-item-types-values.yaml"
	releaseName       = "dp"
	releaseNamespace  = "billing"
	fullName          = "dp-datapump"
	minimumKubernetes = "v1.27.0"
)

// manifests are the objects of one rendering, by name, each decoded
// strictly into its API type.
type manifests struct {
	deployments     map[string]*appsv1.Deployment
	configMaps      map[string]*corev1.ConfigMap
	serviceAccounts map[string]*corev1.ServiceAccount
	services        map[string]*corev1.Service
	pdbs            map[string]*policyv1.PodDisruptionBudget
	scaledObjects   map[string]*v1alpha1.ScaledObject
	triggerAuths    map[string]*v1alpha1.TriggerAuthentication
	serviceMonitors map[string]*monitoringv1.ServiceMonitor
}

// renderChart renders the chart the way `helm template` does, with the
// value files applied in order over values.yaml (schema validation
// included) and the engine in strict mode, where a template that reads a
// missing value is an error. It returns every non-empty document by file.
func renderChart(valueFiles ...string) (map[string][]string, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	if !chartutil.IsCompatibleRange(chrt.Metadata.KubeVersion, minimumKubernetes) {
		return nil, fmt.Errorf("chart kubeVersion %q excludes %s", chrt.Metadata.KubeVersion, minimumKubernetes)
	}
	opts := values.Options{ValueFiles: valueFiles}
	vals, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		return nil, fmt.Errorf("merge values: %w", err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion(minimumKubernetes)
	if err != nil {
		return nil, err
	}
	caps.KubeVersion = *kv
	top, err := chartutil.ToRenderValues(chrt, vals, chartutil.ReleaseOptions{
		Name: releaseName, Namespace: releaseNamespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	files, err := engine.Engine{Strict: true}.Render(chrt, top)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	docs := map[string][]string{}
	for name, content := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		split := releaseutil.SplitManifests(content)
		keys := make([]string, 0, len(split))
		for k := range split {
			keys = append(keys, k)
		}
		sort.Sort(releaseutil.BySplitManifestsOrder(keys))
		for _, k := range keys {
			if strings.TrimSpace(split[k]) != "" {
				docs[name] = append(docs[name], split[k])
			}
		}
	}
	return docs, nil
}

// render renders the chart and decodes every document strictly: an
// unknown field, a wrong type or an unexpected kind fails the test.
func render(t *testing.T, valueFiles ...string) *manifests {
	t.Helper()
	docs, err := renderChart(valueFiles...)
	require.NoError(t, err)
	m := &manifests{
		deployments:     map[string]*appsv1.Deployment{},
		configMaps:      map[string]*corev1.ConfigMap{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
		services:        map[string]*corev1.Service{},
		pdbs:            map[string]*policyv1.PodDisruptionBudget{},
		scaledObjects:   map[string]*v1alpha1.ScaledObject{},
		triggerAuths:    map[string]*v1alpha1.TriggerAuthentication{},
		serviceMonitors: map[string]*monitoringv1.ServiceMonitor{},
	}
	count := 0
	for file, list := range docs {
		for i, doc := range list {
			where := fmt.Sprintf("%s document %d", file, i)
			require.NoError(t, m.add([]byte(doc)), "%s:\n%s", where, doc)
			count++
		}
	}
	require.NotZero(t, count, "the chart rendered nothing")
	return m
}

// add decodes one document into the type its apiVersion and kind name.
func (m *manifests) add(doc []byte) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return fmt.Errorf("read kind: %w", err)
	}
	name := head.Metadata.Name
	if name == "" {
		return fmt.Errorf("%s %s without metadata.name", head.APIVersion, head.Kind)
	}
	switch head.APIVersion + " " + head.Kind {
	case "apps/v1 Deployment":
		return decodeInto(doc, name, m.deployments)
	case "v1 ConfigMap":
		return decodeInto(doc, name, m.configMaps)
	case "v1 ServiceAccount":
		return decodeInto(doc, name, m.serviceAccounts)
	case "v1 Service":
		return decodeInto(doc, name, m.services)
	case "policy/v1 PodDisruptionBudget":
		return decodeInto(doc, name, m.pdbs)
	case "keda.sh/v1alpha1 ScaledObject":
		return decodeInto(doc, name, m.scaledObjects)
	case "keda.sh/v1alpha1 TriggerAuthentication":
		return decodeInto(doc, name, m.triggerAuths)
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return decodeInto(doc, name, m.serviceMonitors)
	}
	return fmt.Errorf("unexpected object %s %s %q", head.APIVersion, head.Kind, name)
}

// decodeInto decodes doc strictly and files it under name, refusing a
// second object of that kind and name. Like kubectl and Helm, it turns the
// YAML into JSON without looking at the target type (so a number where
// the API wants a string stays a number and fails, as the API server
// would refuse it), then decodes the JSON refusing unknown fields.
// Duplicate keys are errors too.
func decodeInto[T any](doc []byte, name string, into map[string]*T) error {
	if _, dup := into[name]; dup {
		return fmt.Errorf("%T %q rendered twice", *new(T), name)
	}
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return fmt.Errorf("%T %q: %w", *new(T), name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	obj := new(T)
	if err := dec.Decode(obj); err != nil {
		return fmt.Errorf("decode %T %q: %w", *obj, name, err)
	}
	if dec.More() {
		return fmt.Errorf("decode %T %q: more than one object in the document", *obj, name)
	}
	into[name] = obj
	return nil
}

// writeValues writes a values file for one test and returns its path.
func writeValues(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "values.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// sortedKeys lists a map's keys in order, for messages and comparisons.
func sortedKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
