package charttest

import (
	"testing"

	"github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	publisher          = fullName + "-publisher"
	billerConsumer     = fullName + "-biller-consumer"
	paymentConsumer    = fullName + "-item-consumer-payment"
	paperlessConsumer  = fullName + "-item-consumer-paperless"
	billerTopic        = "data-pump-data-created"
	paymentTopic       = "data-pump-payment-created"
	paperlessTopic     = "data-pump-paperless-registration-created"
	billerSubscription = "biller-consumer"
	itemSubscription   = "item-consumer"
)

func TestDefaultValues(t *testing.T) {
	t.Parallel()
	m := render(t)
	checkInvariants(t, m)

	checkWorkloads(t, m, []workload{
		{name: publisher, jobs: "publisher", replicas: ptrTo[int32](2)},
		{name: billerConsumer, jobs: "biller-consumer"},
		{name: paymentConsumer, jobs: "item-consumer", itemType: "payment"},
		{name: paperlessConsumer, jobs: "item-consumer", itemType: "paperless"},
	})

	require.Len(t, m.scaledObjects, 3, "biller consumer and one per item type; never the publisher")
	checkScaledObject(t, m, billerConsumer, "nats", billerTopic, billerSubscription,
		scaling{min: 1, max: 10, target: 5, activation: 0, polling: 15, cooldown: 300})
	for name, topic := range map[string]string{paymentConsumer: paymentTopic, paperlessConsumer: paperlessTopic} {
		checkScaledObject(t, m, name, "nats", topic, itemSubscription,
			scaling{min: 1, max: 20, target: 100, activation: 0, polling: 15, cooldown: 300})
	}
	require.Empty(t, m.triggerAuths, "NATS triggers need no TriggerAuthentication")
	require.Empty(t, m.serviceMonitors, "ServiceMonitor is off by default")

	cfg := parseConfig(t, m)
	require.Equal(t, "nats", lookup(t, cfg, "bus", "driver"))
	require.Equal(t, "nats://nats.nats.svc.cluster.local:4222", lookup(t, cfg, "bus", "nats", "url"))
	require.Equal(t, "10m", lookup(t, cfg, "bus", "duplicate_window"), "values.config keys under bus are kept")
	require.Contains(t, lookup(t, cfg, "catalog", "dsn"), "${CATALOG_DB_PASSWORD}", "secrets stay ${VAR} references")

	for name := range m.deployments {
		spec := podSpec(t, m, name)
		c := spec.Containers[0]
		require.Len(t, c.EnvFrom, 1, name)
		require.Equal(t, "datapump", c.EnvFrom[0].SecretRef.Name, "%s: existingSecret", name)
		require.Equal(t, "ghcr.io/datapump/datapump:0.1.0", c.Image, "%s: image tag defaults to appVersion", name)
		require.Equal(t, "30s", flagValue(c.Args, "--drain-timeout"), name)
		require.Equal(t, ptrTo[int64](45), spec.TerminationGracePeriodSeconds, name)
		require.Empty(t, m.deployments[name].Spec.Template.Labels["azure.workload.identity/use"], name)
	}
	sa := m.serviceAccounts[fullName]
	require.NotNil(t, sa)
	require.Empty(t, sa.Annotations["azure.workload.identity/client-id"])
}

func TestTwoItemTypesOnServiceBus(t *testing.T) {
	t.Parallel()
	m := render(t, twoItemTypesFile)
	checkInvariants(t, m)

	checkWorkloads(t, m, []workload{
		{name: publisher, jobs: "publisher", replicas: ptrTo[int32](3)},
		{name: billerConsumer, jobs: "biller-consumer"},
		{name: paymentConsumer, jobs: "item-consumer", itemType: "payment"},
		{name: paperlessConsumer, jobs: "item-consumer", itemType: "paperless"},
	})

	// Scaling point 1 takes billerConsumer.autoscaling; scaling point 2
	// takes itemConsumer.autoscaling with each type's fields over it.
	require.Len(t, m.scaledObjects, 3)
	checkScaledObject(t, m, billerConsumer, "servicebus", billerTopic, billerSubscription,
		scaling{min: 2, max: 8, target: 10, activation: 1, polling: 15, cooldown: 300})
	checkScaledObject(t, m, paymentConsumer, "servicebus", paymentTopic, itemSubscription,
		scaling{min: 3, max: 40, target: 50, activation: 5, polling: 15, cooldown: 300})
	checkScaledObject(t, m, paperlessConsumer, "servicebus", paperlessTopic, itemSubscription,
		scaling{min: 0, max: 12, target: 200, activation: 5, polling: 15, cooldown: 300})

	ta := m.triggerAuths[fullName+"-servicebus"]
	require.NotNil(t, ta, "TriggerAuthentication; have %v", sortedKeys(m.triggerAuths))
	require.Equal(t, &v1alpha1.AuthPodIdentity{Provider: v1alpha1.PodIdentityProviderAzureWorkload}, ta.Spec.PodIdentity)
	require.Empty(t, ta.Spec.SecretTargetRef)

	sa := m.serviceAccounts[fullName]
	require.NotNil(t, sa)
	require.Equal(t, "00000000-0000-0000-0000-000000000001", sa.Annotations["azure.workload.identity/client-id"])
	for name, d := range m.deployments {
		require.Equal(t, "true", d.Spec.Template.Labels["azure.workload.identity/use"], "%s: workload identity label", name)
		spec := podSpec(t, m, name)
		require.Equal(t, fullName, spec.ServiceAccountName, name)
		require.Empty(t, spec.Containers[0].EnvFrom, "%s: no secret with workload identity", name)
		require.Equal(t, "acmebilling.azurecr.io/datapump:0.1.0", spec.Containers[0].Image, name)
	}

	// A type's own resources replace the item consumers' defaults.
	payment := podSpec(t, m, paymentConsumer).Containers[0].Resources
	require.True(t, resource.MustParse("2").Equal(payment.Limits["cpu"]), "payment cpu limit %v", payment.Limits.Cpu())
	require.True(t, resource.MustParse("1Gi").Equal(payment.Limits["memory"]), "payment memory limit %v", payment.Limits.Memory())
	paperless := podSpec(t, m, paperlessConsumer).Containers[0].Resources
	require.True(t, resource.MustParse("512Mi").Equal(paperless.Limits["memory"]), "paperless memory limit %v", paperless.Limits.Memory())

	cfg := parseConfig(t, m)
	require.Equal(t, "servicebus", lookup(t, cfg, "bus", "driver"))
	require.Equal(t, map[string]any{"namespace": "acme-billing.servicebus.windows.net"}, lookup(t, cfg, "bus", "servicebus"),
		"workload identity: the namespace and no connection string (the product refuses both)")
	require.Len(t, lookup(t, cfg, "shards"), 2)
	require.Equal(t, "sqlserver", lookup(t, cfg, "catalog", "driver"))

	sm := m.serviceMonitors[fullName]
	require.NotNil(t, sm, "ServiceMonitor; have %v", sortedKeys(m.serviceMonitors))
	require.Equal(t, "kube-prometheus-stack", sm.Labels["release"])
	svc := m.services[metricsSvc]
	for k, v := range sm.Spec.Selector.MatchLabels {
		require.Equal(t, v, svc.Labels[k], "ServiceMonitor selector %s does not match the metrics Service", k)
	}
	require.Len(t, sm.Spec.Endpoints, 1)
	require.Equal(t, "http", sm.Spec.Endpoints[0].Port)
	require.Equal(t, svc.Spec.Ports[0].Name, sm.Spec.Endpoints[0].Port)
	require.Equal(t, "/metrics", sm.Spec.Endpoints[0].Path)
}

// TestScalingFollowsValues sets every scaling value to a number used
// nowhere else and finds each one where it belongs: one item consumer per
// listed type, each type's overrides on its own ScaledObject only.
func TestScalingFollowsValues(t *testing.T) {
	t.Parallel()
	values := writeValues(t, `
bus:
  topicPrefix: staging.
billerConsumer:
  autoscaling: {minReplicaCount: 3, maxReplicaCount: 17, messageCount: 23, activationMessageCount: 7, pollingInterval: 11, cooldownPeriod: 61}
itemConsumer:
  autoscaling: {minReplicaCount: 2, maxReplicaCount: 29, messageCount: 31, activationMessageCount: 4, pollingInterval: 13, cooldownPeriod: 67}
  types:
    - name: payment
      topic: data-pump-payment-created
      autoscaling: {minReplicaCount: 5, maxReplicaCount: 41, messageCount: 43, activationMessageCount: 9, pollingInterval: 19, cooldownPeriod: 71}
    - name: paperless
      topic: data-pump-paperless-registration-created
      autoscaling: {maxReplicaCount: 37}
    - name: invoice
      topic: invoice.created
    - name: refund
      topic: data-pump-refund-created
      replicas: 6
      autoscaling: {enabled: false}
`)
	m := render(t, values)
	checkInvariants(t, m)

	const invoiceConsumer = fullName + "-item-consumer-invoice"
	const refundConsumer = fullName + "-item-consumer-refund"
	checkWorkloads(t, m, []workload{
		{name: publisher, jobs: "publisher", replicas: ptrTo[int32](2)},
		{name: billerConsumer, jobs: "biller-consumer"},
		{name: paymentConsumer, jobs: "item-consumer", itemType: "payment"},
		{name: paperlessConsumer, jobs: "item-consumer", itemType: "paperless"},
		{name: invoiceConsumer, jobs: "item-consumer", itemType: "invoice"},
		{name: refundConsumer, jobs: "item-consumer", itemType: "refund", replicas: ptrTo[int32](6)},
	})
	require.Len(t, m.scaledObjects, 4, "refund has autoscaling disabled")
	require.NotContains(t, m.scaledObjects, refundConsumer)

	// The topic prefix is on every topic; the JetStream stream is the
	// topic with '.' made '_', as the jetstream adapter names it.
	checkScaledObject(t, m, billerConsumer, "nats", "staging_"+billerTopic, billerSubscription,
		scaling{min: 3, max: 17, target: 23, activation: 7, polling: 11, cooldown: 61})
	checkScaledObject(t, m, paymentConsumer, "nats", "staging_"+paymentTopic, itemSubscription,
		scaling{min: 5, max: 41, target: 43, activation: 9, polling: 19, cooldown: 71})
	checkScaledObject(t, m, paperlessConsumer, "nats", "staging_"+paperlessTopic, itemSubscription,
		scaling{min: 2, max: 37, target: 31, activation: 4, polling: 13, cooldown: 67})
	checkScaledObject(t, m, invoiceConsumer, "nats", "staging_invoice_created", itemSubscription,
		scaling{min: 2, max: 29, target: 31, activation: 4, polling: 13, cooldown: 67})

	cfg := parseConfig(t, m)
	require.Equal(t, "staging.", lookup(t, cfg, "bus", "topic_prefix"))
}

func TestKEDADisabled(t *testing.T) {
	t.Parallel()
	values := writeValues(t, `
keda: {enabled: false}
billerConsumer: {replicas: 4}
itemConsumer:
  replicas: 2
  types:
    - {name: payment, topic: data-pump-payment-created}
    - {name: paperless, topic: data-pump-paperless-registration-created, replicas: 1}
`)
	m := render(t, twoItemTypesFile, values)
	checkInvariants(t, m)
	require.Empty(t, m.scaledObjects)
	require.Empty(t, m.triggerAuths)
	checkWorkloads(t, m, []workload{
		{name: publisher, jobs: "publisher", replicas: ptrTo[int32](3)},
		{name: billerConsumer, jobs: "biller-consumer", replicas: ptrTo[int32](4)},
		{name: paymentConsumer, jobs: "item-consumer", itemType: "payment", replicas: ptrTo[int32](2)},
		{name: paperlessConsumer, jobs: "item-consumer", itemType: "paperless", replicas: ptrTo[int32](1)},
	})
}

func TestServiceBusConnectionString(t *testing.T) {
	t.Parallel()
	values := writeValues(t, `
existingSecret: datapump-bus
workloadIdentity: {enabled: false}
bus:
  servicebus:
    connectionString: ${SERVICEBUS_CONNECTION_STRING}
keda:
  servicebus:
    connectionSecret: {name: datapump-bus, key: SERVICEBUS_CONNECTION_STRING}
`)
	m := render(t, twoItemTypesFile, values)
	checkInvariants(t, m)

	cfg := parseConfig(t, m)
	require.Equal(t, map[string]any{"connection_string": "${SERVICEBUS_CONNECTION_STRING}"}, lookup(t, cfg, "bus", "servicebus"),
		"the connection string replaces the namespace in the config")
	ta := m.triggerAuths[fullName+"-servicebus"]
	require.NotNil(t, ta)
	require.Nil(t, ta.Spec.PodIdentity)
	require.Equal(t, []v1alpha1.AuthSecretTargetRef{{Parameter: "connection", Name: "datapump-bus", Key: "SERVICEBUS_CONNECTION_STRING"}}, ta.Spec.SecretTargetRef)
	for name, d := range m.deployments {
		require.Empty(t, d.Spec.Template.Labels["azure.workload.identity/use"], name)
		require.Equal(t, "datapump-bus", d.Spec.Template.Spec.Containers[0].EnvFrom[0].SecretRef.Name, name)
	}
	checkScaledObject(t, m, billerConsumer, "servicebus", billerTopic, billerSubscription,
		scaling{min: 2, max: 8, target: 10, activation: 1, polling: 15, cooldown: 300})
}

func TestPodDisruptionBudgetsFollowValues(t *testing.T) {
	t.Parallel()
	m := render(t, writeValues(t, "podDisruptionBudget: {maxUnavailable: 2}\n"))
	require.Len(t, m.pdbs, len(m.deployments))
	for name, pdb := range m.pdbs {
		require.Equal(t, ptrTo(intstr.FromInt32(2)), pdb.Spec.MaxUnavailable, name)
		require.Nil(t, pdb.Spec.MinAvailable, name)
	}
}

// TestRejectedValues checks that values the pods or KEDA could not work
// with fail at render time, naming the value.
func TestRejectedValues(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, values, want string
	}{
		{"unknown bus driver", "bus: {driver: kafka}\n", "driver"},
		{"misspelt scaling key", "billerConsumer: {autoscaling: {maxReplicas: 3}}\n", "maxReplicas"},
		{"item type listed twice", "itemConsumer: {types: [{name: payment, topic: a}, {name: payment, topic: b}]}\n", "listed twice"},
		{"item type without topic", "itemConsumer: {types: [{name: payment}]}\n", "topic"},
		{"item type name not a DNS label", "itemConsumer: {types: [{name: Pay_ment, topic: a}]}\n", "name"},
		{"minimum above maximum", "itemConsumer: {autoscaling: {minReplicaCount: 9, maxReplicaCount: 3}}\n", "exceeds maxReplicaCount"},
		{"no limits", "publisher: {resources: {requests: {cpu: 1m, memory: 1Mi}, limits: null}}\n", "limits"},
		{"Service Bus without namespace", "bus: {driver: servicebus}\nworkloadIdentity: {enabled: true, clientId: x}\n", "bus.servicebus.namespace"},
		{"Service Bus without credentials for KEDA", "bus: {driver: servicebus, servicebus: {namespace: a.servicebus.windows.net}}\n", "keda.servicebus.connectionSecret"},
		{"workload identity without client id", "workloadIdentity: {enabled: true}\n", "workloadIdentity.clientId"},
		{"NATS without a server", "bus: {nats: {url: \"\"}}\n", "bus.nats.url"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := renderChart(writeValues(t, tc.values))
			require.Error(t, err)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
