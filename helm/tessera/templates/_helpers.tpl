{{/* Chart name, at most 63 characters. */}}
{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<chart>" (or the release alone when it already holds the chart name). Cut to 30
characters: StatefulSet names add "-<role>-<pool>" and their pods' controller-revision-hash
label must stay within 63 characters.
*/}}
{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 30 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tessera.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tessera.labels" -}}
helm.sh/chart: {{ include "tessera.chart" . }}
app.kubernetes.io/name: {{ include "tessera.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tessera
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "coordinator"). */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tessera.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* NATS servers the Tessera pods connect to. */}}
{{- define "tessera.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "%s-nats.%s.svc.%s:4222" (include "tessera.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- required "nats.url is required when nats.enabled is false" .Values.nats.url }}
{{- end }}
{{- end }}

{{/* The OTLP endpoint: otel.endpoint, else the chart's Jaeger, else "". */}}
{{- define "tessera.otlpEndpoint" -}}
{{- if .Values.otel.endpoint }}
{{- .Values.otel.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- $port := ternary "4317" "4318" (eq .Values.otel.protocol "grpc") }}
{{- printf "http://%s-jaeger.%s.svc.%s:%s" (include "tessera.fullname" .) .Release.Namespace .Values.clusterDomain $port }}
{{- end }}
{{- end }}

{{/*
Environment shared by every Tessera container: call with
(dict "root" $ "role" "gpu" "pool" "default" "port" 7301).
*/}}
{{- define "tessera.env" -}}
{{- $root := .root -}}
- name: POD_NAME
  valueFrom: { fieldRef: { fieldPath: metadata.name } }
- name: POD_NAMESPACE
  valueFrom: { fieldRef: { fieldPath: metadata.namespace } }
- name: TESSERA_HOST
  value: "0.0.0.0"
- name: TESSERA_PORT
  value: {{ .port | quote }}
- name: TESSERA_NATS
  value: {{ include "tessera.natsUrl" $root | quote }}
- name: TESSERA_NATS_PREFIX
  value: {{ $root.Values.natsPrefix | quote }}
{{- if $root.Values.metrics.port }}
- name: TESSERA_METRICS_PORT
  value: {{ $root.Values.metrics.port | quote }}
{{- end }}
- name: TESSERA_TLS_CA
  value: /etc/tessera/tls/ca.pem
- name: TESSERA_TLS_CERT
  value: /etc/tessera/tls/{{ .role }}.pem
- name: TESSERA_TLS_KEY
  value: /etc/tessera/tls/{{ .role }}-key.pem
{{- with $root.Values.nats.auth.existingSecret }}
- name: TESSERA_NATS_USER
  valueFrom: { secretKeyRef: { name: {{ . }}, key: {{ $root.Values.nats.auth.userKey }} } }
- name: TESSERA_NATS_PASSWORD
  valueFrom: { secretKeyRef: { name: {{ . }}, key: {{ $root.Values.nats.auth.passwordKey }} } }
{{- end }}
- name: TESSERA_NODE_ID
  value: $(POD_NAME)
- name: TESSERA_CLUSTER_DOMAIN
  value: {{ $root.Values.clusterDomain | quote }}
{{- with .pool }}
- name: TESSERA_POOL
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: tessera-{{ .role }}
{{- $attrs := printf "tessera.role=%s,k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)" (trimSuffix "-node" .role) }}
{{- if .pool }}{{ $attrs = printf "%s,tessera.pool=%s" $attrs .pool }}{{ end }}
{{- with $root.Values.otel.resourceAttributes }}{{ $attrs = printf "%s,%s" $attrs . }}{{ end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ $attrs | quote }}
{{- with include "tessera.otlpEndpoint" $root }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $root.Values.otel.protocol | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
{{- end }}

{{/*
Volumes of every Tessera pod: TLS secret, health probe script, /tmp. Call with
(dict "root" $ "role" "gpu-node"): a pod mounts only ca.pem and its own role's certificate and
key (<role>.pem, <role>-key.pem), never another role's key (issue 13: each RPC checks the
caller's role).
*/}}
{{- define "tessera.volumes" -}}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required: Tessera's services run mutual TLS" .root.Values.tls.secretName }}
    defaultMode: 288 # 0440 (decimal: YAML 1.1 and 1.2 read 0440 differently)
    items:
      - { key: ca.pem, path: ca.pem }
      - { key: {{ .role }}.pem, path: {{ .role }}.pem }
      - { key: {{ .role }}-key.pem, path: {{ .role }}-key.pem }
- name: probe
  configMap:
    name: {{ include "tessera.fullname" .root }}-probe
    defaultMode: 292 # 0444
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "tessera.volumeMounts" -}}
- name: tls
  mountPath: /etc/tessera/tls
  readOnly: true
- name: probe
  mountPath: /etc/tessera/probe
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Probes of a Tessera container listening on .port (see values: probes). */}}
{{- define "tessera.probes" -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  tcpSocket: { port: grpc }
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
readinessProbe:
  exec:
    command: ["node", "/etc/tessera/probe/grpc-health-probe.cjs", "127.0.0.1:{{ .port }}"]
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
livenessProbe:
  tcpSocket: { port: grpc }
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
{{- end }}

{{/* The metrics container port of a Tessera container (none when metrics.port is 0). */}}
{{- define "tessera.metricsPort" -}}
{{- if .Values.metrics.port }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations of a Tessera pod. */}}
{{- define "tessera.metricsAnnotations" -}}
{{- if .Values.metrics.port }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
