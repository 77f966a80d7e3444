package charttest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	adminPort  = 8080
	nonRootUID = 65532
	configPath = "/etc/datapump/config.yaml"
	configName = fullName + "-config"
	metricsSvc = fullName + "-metrics"
)

// checkInvariants checks what must hold for any values: every Deployment
// has its PodDisruptionBudget, probes, limits and a non-root container,
// selectors pick exactly their own pods, references resolve, a scaled
// Deployment leaves its replica count to KEDA, and the config is YAML with
// http.addr on the probed port.
func checkInvariants(t *testing.T, m *manifests) {
	t.Helper()
	require.NotEmpty(t, m.deployments)
	cfg := parseConfig(t, m)
	require.Equal(t, fmt.Sprintf(":%d", adminPort), lookup(t, cfg, "http", "addr"), "config http.addr")

	svc := m.services[metricsSvc]
	require.NotNil(t, svc, "metrics Service %s; services: %v", metricsSvc, sortedKeys(m.services))
	require.Len(t, svc.Spec.Ports, 1)
	require.Equal(t, intstr.FromString("http"), svc.Spec.Ports[0].TargetPort)

	for name, d := range m.deployments {
		podLabels := labels.Set(d.Spec.Template.Labels)
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		require.NoError(t, err, name)
		require.True(t, sel.Matches(podLabels), "%s: selector does not match its pods", name)

		pdb := m.pdbs[name]
		require.NotNil(t, pdb, "%s: no PodDisruptionBudget", name)
		pdbSel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		require.NoError(t, err, name)
		require.True(t, pdbSel.Matches(podLabels), "%s: PodDisruptionBudget misses its pods", name)
		for other, o := range m.deployments {
			if other == name {
				continue
			}
			otherPods := labels.Set(o.Spec.Template.Labels)
			require.False(t, sel.Matches(otherPods), "%s selects the pods of %s", name, other)
			require.False(t, pdbSel.Matches(otherPods), "PodDisruptionBudget %s covers the pods of %s", name, other)
		}
		require.True(t, labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels), "%s: metrics Service misses its pods", name)
		require.NotEmpty(t, d.Spec.Template.Annotations["checksum/config"], "%s: pods do not roll on config changes", name)

		spec := d.Spec.Template.Spec
		require.NotNil(t, spec.SecurityContext, name)
		require.Equal(t, ptrTo(true), spec.SecurityContext.RunAsNonRoot, "%s: pod runAsNonRoot", name)
		require.Contains(t, m.serviceAccounts, spec.ServiceAccountName, "%s: service account", name)
		require.NotNil(t, spec.TerminationGracePeriodSeconds, name)

		var configVolume string
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil {
				require.Contains(t, m.configMaps, v.ConfigMap.Name, "%s: volume %s", name, v.Name)
				configVolume = v.Name
			}
		}
		require.NotEmpty(t, configVolume, "%s: no config volume", name)

		require.Len(t, spec.Containers, 1, name)
		require.Empty(t, spec.InitContainers, name)
		for _, c := range spec.Containers {
			checkContainer(t, name, c, configVolume)
		}

		if _, scaled := m.scaledObjects[name]; scaled {
			require.Nil(t, d.Spec.Replicas, "%s: KEDA scales it, so the Deployment must not set replicas", name)
		} else {
			require.NotNil(t, d.Spec.Replicas, "%s: unscaled Deployment without replicas", name)
		}
	}

	for name, so := range m.scaledObjects {
		require.NotNil(t, so.Spec.ScaleTargetRef, name)
		require.Equal(t, name, so.Spec.ScaleTargetRef.Name, "%s: scale target", name)
		require.Contains(t, m.deployments, so.Spec.ScaleTargetRef.Name, "%s: scale target", name)
		require.Len(t, so.Spec.Triggers, 1, name)
		if ref := so.Spec.Triggers[0].AuthenticationRef; ref != nil {
			require.Contains(t, m.triggerAuths, ref.Name, "%s: authenticationRef", name)
		}
		require.NotNil(t, so.Spec.MinReplicaCount, name)
		require.NotNil(t, so.Spec.MaxReplicaCount, name)
		require.LessOrEqual(t, *so.Spec.MinReplicaCount, *so.Spec.MaxReplicaCount, name)
	}
}

// checkContainer checks one container: probes on the admin port, requests
// and limits, the restricted security context, and the datapump command line.
func checkContainer(t *testing.T, deployment string, c corev1.Container, configVolume string) {
	t.Helper()
	where := deployment + "/" + c.Name

	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	probe := func(kind string, p *corev1.Probe, path string) {
		require.NotNil(t, p, "%s: no %s probe", where, kind)
		require.NotNil(t, p.HTTPGet, "%s: %s probe is not HTTP", where, kind)
		require.Equal(t, path, p.HTTPGet.Path, "%s: %s probe path", where, kind)
		port := p.HTTPGet.Port
		if port.Type == intstr.String {
			require.Contains(t, ports, port.StrVal, "%s: %s probe port", where, kind)
			require.EqualValues(t, adminPort, ports[port.StrVal], "%s: %s probe port", where, kind)
		} else {
			require.EqualValues(t, adminPort, port.IntVal, "%s: %s probe port", where, kind)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("readiness", c.ReadinessProbe, "/readyz")

	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		limit, ok := c.Resources.Limits[res]
		require.True(t, ok, "%s: no %s limit", where, res)
		require.Positive(t, limit.Sign(), "%s: %s limit", where, res)
		request, ok := c.Resources.Requests[res]
		require.True(t, ok, "%s: no %s request", where, res)
		require.Positive(t, request.Sign(), "%s: %s request", where, res)
		require.LessOrEqual(t, request.Cmp(limit), 0, "%s: %s request above its limit", where, res)
	}

	sc := c.SecurityContext
	require.NotNil(t, sc, "%s: no securityContext", where)
	require.Equal(t, ptrTo(true), sc.RunAsNonRoot, "%s: runAsNonRoot", where)
	require.Equal(t, ptrTo(int64(nonRootUID)), sc.RunAsUser, "%s: runAsUser", where)
	require.Equal(t, ptrTo(true), sc.ReadOnlyRootFilesystem, "%s: readOnlyRootFilesystem", where)
	require.Equal(t, ptrTo(false), sc.AllowPrivilegeEscalation, "%s: allowPrivilegeEscalation", where)
	require.NotNil(t, sc.Capabilities, where)
	require.Contains(t, sc.Capabilities.Drop, corev1.Capability("ALL"), "%s: capabilities", where)
	require.Empty(t, sc.Capabilities.Add, "%s: capabilities", where)

	require.GreaterOrEqual(t, len(c.Args), 5, where)
	require.Equal(t, "run", c.Args[0], where)
	require.Equal(t, configPath, flagValue(c.Args, "--config"), where)
	require.Contains(t, []string{"publisher", "biller-consumer", "item-consumer"}, flagValue(c.Args, "--jobs"), where)
	require.True(t, slices.ContainsFunc(c.VolumeMounts, func(v corev1.VolumeMount) bool {
		return v.Name == configVolume && v.MountPath == "/etc/datapump" && v.ReadOnly
	}), "%s: config not mounted read-only at /etc/datapump", where)
}

// workload is what a test expects of one job's Deployment.
type workload struct {
	name     string
	jobs     string
	itemType string
	replicas *int32 // nil when KEDA scales it
}

// checkWorkloads checks that exactly the expected Deployments exist, each
// starting its job (and item type) with the expected replica count.
func checkWorkloads(t *testing.T, m *manifests, want []workload) {
	t.Helper()
	names := make([]string, 0, len(want))
	for _, w := range want {
		names = append(names, w.name)
	}
	slices.Sort(names)
	require.Equal(t, names, sortedKeys(m.deployments), "Deployments")
	for _, w := range want {
		d := m.deployments[w.name]
		args := d.Spec.Template.Spec.Containers[0].Args
		require.Equal(t, w.jobs, flagValue(args, "--jobs"), "%s: --jobs", w.name)
		require.Equal(t, w.itemType, flagValue(args, "--item-types"), "%s: --item-types", w.name)
		require.Equal(t, w.replicas, d.Spec.Replicas, "%s: replicas", w.name)
		if w.itemType != "" {
			require.Equal(t, w.itemType, d.Spec.Template.Labels["datapump.io/item-type"], w.name)
		}
	}
}

// scaling is what a test expects of one ScaledObject.
type scaling struct {
	min, max           int32
	target, activation int
	polling, cooldown  int32
}

// checkScaledObject checks a ScaledObject's replica bounds and its trigger
// on the given topic and subscription: azure-servicebus with the
// namespace and the TriggerAuthentication, or nats-jetstream on the
// stream and durable consumer named after them.
func checkScaledObject(t *testing.T, m *manifests, name, busDriver, topic, subscription string, want scaling) {
	t.Helper()
	so := m.scaledObjects[name]
	require.NotNil(t, so, "ScaledObject %s; have %v", name, sortedKeys(m.scaledObjects))
	require.Equal(t, &v1alpha1.ScaleTarget{Name: name, APIVersion: "apps/v1", Kind: "Deployment"}, so.Spec.ScaleTargetRef)
	require.Equal(t, ptrTo(want.min), so.Spec.MinReplicaCount, "%s: minReplicaCount", name)
	require.Equal(t, ptrTo(want.max), so.Spec.MaxReplicaCount, "%s: maxReplicaCount", name)
	require.Equal(t, ptrTo(want.polling), so.Spec.PollingInterval, "%s: pollingInterval", name)
	require.Equal(t, ptrTo(want.cooldown), so.Spec.CooldownPeriod, "%s: cooldownPeriod", name)
	require.Len(t, so.Spec.Triggers, 1, name)
	tr := so.Spec.Triggers[0]
	switch busDriver {
	case "servicebus":
		require.Equal(t, "azure-servicebus", tr.Type, name)
		require.Equal(t, map[string]string{
			"topicName":              topic,
			"subscriptionName":       subscription,
			"namespace":              "acme-billing",
			"messageCount":           fmt.Sprint(want.target),
			"activationMessageCount": fmt.Sprint(want.activation),
		}, tr.Metadata, name)
		require.NotNil(t, tr.AuthenticationRef, name)
		require.Equal(t, fullName+"-servicebus", tr.AuthenticationRef.Name, name)
	case "nats":
		require.Equal(t, "nats-jetstream", tr.Type, name)
		require.Equal(t, map[string]string{
			"natsServerMonitoringEndpoint": "nats.nats.svc.cluster.local:8222",
			"account":                      "$G",
			"stream":                       topic,
			"consumer":                     subscription,
			"lagThreshold":                 fmt.Sprint(want.target),
			"activationLagThreshold":       fmt.Sprint(want.activation),
			"useHttps":                     "false",
		}, tr.Metadata, name)
		require.Nil(t, tr.AuthenticationRef, name)
	default:
		t.Fatalf("unknown bus driver %q", busDriver)
	}
}

// parseConfig parses the ConfigMap's config.yaml.
func parseConfig(t *testing.T, m *manifests) map[string]any {
	t.Helper()
	cm := m.configMaps[configName]
	require.NotNil(t, cm, "ConfigMap %s; have %v", configName, sortedKeys(m.configMaps))
	raw, ok := cm.Data["config.yaml"]
	require.True(t, ok, "ConfigMap has no config.yaml")
	var cfg map[string]any
	require.NoError(t, yaml.UnmarshalStrict([]byte(raw), &cfg), "config.yaml:\n%s", raw)
	return cfg
}

// lookup returns the value at a key path of a parsed YAML document.
func lookup(t *testing.T, doc map[string]any, path ...string) any {
	t.Helper()
	var cur any = doc
	for i, k := range path {
		m, ok := cur.(map[string]any)
		require.True(t, ok, "%v is not a mapping", path[:i])
		cur, ok = m[k]
		require.True(t, ok, "no key %v", path[:i+1])
	}
	return cur
}

// flagValue returns the argument after flag, or "" when flag is absent.
func flagValue(args []string, flag string) string {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

func ptrTo[T any](v T) *T { return &v }

// podSpec returns a Deployment's pod spec, failing when it is missing.
func podSpec(t *testing.T, m *manifests, name string) corev1.PodSpec {
	t.Helper()
	d := m.deployments[name]
	require.NotNil(t, d, "Deployment %s; have %v", name, sortedKeys(m.deployments))
	return d.Spec.Template.Spec
}
