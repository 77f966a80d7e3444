{{/* The admin HTTP port: /healthz, /readyz and /metrics (http.addr ":8080"). */}}
{{- define "datapump.adminPort" -}}8080{{- end }}

{{- define "datapump.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; every object name starts with it. */}}
{{- define "datapump.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "datapump.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "datapump.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: datapump
{{- end }}

{{- define "datapump.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datapump.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one workload; takes (dict "root" $ "w" $workload). */}}
{{- define "datapump.workloadSelectorLabels" -}}
{{ include "datapump.selectorLabels" .root }}
app.kubernetes.io/component: {{ .w.component }}
{{- if .w.itemType }}
datapump.io/item-type: {{ .w.itemType }}
{{- end }}
{{- end }}

{{- define "datapump.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "datapump.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "datapump.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* A topic as the broker names it: the configured prefix, then the topic. */}}
{{- define "datapump.topic" -}}
{{- printf "%s%s" .root.Values.bus.topicPrefix .topic }}
{{- end }}

{{/*
A JetStream stream or consumer name as the jetstream adapter derives it
from a topic or subscription name: '.', '*', '>', '/', '\' and blanks
become '_'.
*/}}
{{- define "datapump.jetstreamName" -}}
{{- regexReplaceAll "[.*>/\\\\\\s]" . "_" }}
{{- end }}

{{- define "datapump.autoscaled" -}}
{{- if and .root.Values.keda.enabled .w.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/*
The workloads, one per Deployment, as a YAML list: name, component, the
--jobs value, the item type (item consumers), replicas and resources, and
for the two scaling points the topic, subscription and the effective
autoscaling settings (an item type's own settings over itemConsumer's).
*/}}
{{- define "datapump.workloads" -}}
{{- $full := include "datapump.fullname" . }}
- name: {{ printf "%s-publisher" $full | trunc 63 | trimSuffix "-" }}
  component: publisher
  jobs: publisher
  itemType: ""
  replicas: {{ int .Values.publisher.replicas }}
  resources: {{ toJson .Values.publisher.resources }}
  autoscaling: {"enabled": false}
- name: {{ printf "%s-biller-consumer" $full | trunc 63 | trimSuffix "-" }}
  component: biller-consumer
  jobs: biller-consumer
  itemType: ""
  replicas: {{ int .Values.billerConsumer.replicas }}
  resources: {{ toJson .Values.billerConsumer.resources }}
  topic: {{ include "datapump.topic" (dict "root" . "topic" .Values.billerTopic) | quote }}
  subscription: {{ .Values.subscriptions.biller | quote }}
  autoscaling: {{ toJson .Values.billerConsumer.autoscaling }}
{{- $seen := dict }}
{{- range $i, $t := .Values.itemConsumer.types }}
{{- $name := required (printf "itemConsumer.types[%d].name is required" $i) (get $t "name") }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "itemConsumer.types[%d].name %q must be lowercase letters, digits and '-' (it names Kubernetes objects)" $i $name) }}
{{- end }}
{{- if hasKey $seen $name }}
{{- fail (printf "itemConsumer.types: %q is listed twice" $name) }}
{{- end }}
{{- $_ := set $seen $name true }}
{{- $topic := required (printf "itemConsumer.types[%d].topic is required" $i) (get $t "topic") }}
{{- $autoscaling := mergeOverwrite (deepCopy $.Values.itemConsumer.autoscaling) (deepCopy (default dict (get $t "autoscaling"))) }}
- name: {{ printf "%s-item-consumer-%s" $full $name | trunc 63 | trimSuffix "-" }}
  component: item-consumer
  jobs: item-consumer
  itemType: {{ $name }}
  replicas: {{ int (ternary (get $t "replicas") $.Values.itemConsumer.replicas (hasKey $t "replicas")) }}
  resources: {{ toJson (default $.Values.itemConsumer.resources (get $t "resources")) }}
  topic: {{ include "datapump.topic" (dict "root" $ "topic" $topic) | quote }}
  subscription: {{ $.Values.subscriptions.item | quote }}
  autoscaling: {{ toJson $autoscaling }}
{{- end }}
{{- end }}

{{/*
The configuration file: values.config with the chart's keys set over it
(http.addr and the bus connection), so the pods, the probes and the KEDA
triggers agree.
*/}}
{{- define "datapump.config" -}}
{{- $cfg := deepCopy (default dict .Values.config) }}
{{- $bus := deepCopy (default dict (get $cfg "bus")) }}
{{- $_ := set $bus "driver" .Values.bus.driver }}
{{- if .Values.bus.topicPrefix }}
{{- $_ := set $bus "topic_prefix" .Values.bus.topicPrefix }}
{{- end }}
{{- if eq .Values.bus.driver "nats" }}
{{- $_ := set $bus "nats" (dict "url" (required "bus.nats.url is required: every Deployment must reach one NATS server" .Values.bus.nats.url)) }}
{{- else if eq .Values.bus.driver "servicebus" }}
{{- $sb := dict }}
{{- if .Values.bus.servicebus.connectionString }}
{{- $_ := set $sb "connection_string" .Values.bus.servicebus.connectionString }}
{{- else }}
{{- $_ := set $sb "namespace" (required "bus.servicebus.namespace or bus.servicebus.connectionString is required" .Values.bus.servicebus.namespace) }}
{{- end }}
{{- if .Values.bus.servicebus.adminEndpoint }}
{{- $_ := set $sb "admin_endpoint" .Values.bus.servicebus.adminEndpoint }}
{{- end }}
{{- $_ := set $bus "servicebus" $sb }}
{{- else }}
{{- fail (printf "bus.driver %q is not one of nats, servicebus" .Values.bus.driver) }}
{{- end }}
{{- $_ := set $cfg "bus" $bus }}
{{- $_ := set $cfg "http" (dict "addr" (printf ":%s" (include "datapump.adminPort" .))) }}
{{- toYaml $cfg }}
{{- end }}
