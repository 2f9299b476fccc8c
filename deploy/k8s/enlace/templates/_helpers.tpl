{{/* The release's name prefix: the release name when it already says enlace, else <release>-enlace. */}}
{{- define "enlace.fullname" -}}
{{- if contains "enlace" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-enlace" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "enlace.labels" -}}
app.kubernetes.io/name: enlace
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: enlace
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one service's pods: (dict "root" $ "service" "intake") */}}
{{- define "enlace.selector" -}}
app.kubernetes.io/name: enlace
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "enlace.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "enlace.kafkaCluster" -}}
{{- required "kafka.clusterName is required" .Values.kafka.clusterName -}}
{{- end -}}

{{/* The Secret with a service's database URL (key: url), and the one with its key-encryption key (key: key). */}}
{{- define "enlace.databaseSecret" -}}
{{- $db := index .root.Values.database .service -}}
{{- $db.existingSecret | default (printf "%s-%s-database" (include "enlace.fullname" .root) .service) -}}
{{- end -}}

{{- define "enlace.dataKeySecret" -}}
{{- $key := index .root.Values.dataKeys .service -}}
{{- $key.existingSecret | default (printf "%s-%s-data-key" (include "enlace.fullname" .root) .service) -}}
{{- end -}}

{{- define "enlace.directoryConfigMap" -}}
{{- .Values.directory.existingConfigMap | default (printf "%s-directory" (include "enlace.fullname" .)) -}}
{{- end -}}

{{/* The settings every service reads the same way (libs/enlace_platform/settings.py). */}}
{{- define "enlace.commonEnv" -}}
{{- $root := . -}}
- name: ENLACE_KAFKA_BOOTSTRAP_SERVERS
  {{- $cluster := include "enlace.kafkaCluster" $root }}
  value: {{ printf "%s-kafka-bootstrap:%d" $cluster (int $root.Values.kafka.port) | quote }}
- name: ENLACE_KAFKA_TOPIC_PREFIX
  value: {{ $root.Values.kafka.topicPrefix | quote }}
- name: ENLACE_KAFKA_SECURITY_PROTOCOL
  value: SASL_SSL
- name: ENLACE_KAFKA_SASL_MECHANISM
  value: SCRAM-SHA-512
- name: ENLACE_KAFKA_SSL_CAFILE
  value: /run/secrets/kafka-ca/ca.crt
- name: ENLACE_LOG_JSON
  value: "true"
- name: ENLACE_AUTH_AUDIENCE
  value: {{ $root.Values.auth.audience | quote }}
{{- if $root.Values.auth.trustedIssuers }}
- name: ENLACE_AUTH_TRUSTED_ISSUERS
  value: {{ $root.Values.auth.trustedIssuers | toJson | quote }}
{{- else if and $root.Values.auth.issuer $root.Values.auth.jwksUrl }}
- name: ENLACE_AUTH_ISSUER
  value: {{ $root.Values.auth.issuer | quote }}
- name: ENLACE_AUTH_JWKS_URL
  value: {{ $root.Values.auth.jwksUrl | quote }}
{{- else }}
{{- /* The development issuer's key file has no place in a cluster. */}}
{{- fail "auth: set auth.trustedIssuers, or auth.issuer with auth.jwksUrl" }}
{{- end }}
{{- if $root.Values.tracing.otlpEndpoint }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $root.Values.tracing.otlpEndpoint | quote }}
{{- with $root.Values.tracing.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $root.Values.tracing.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
{{- end -}}

{{/* Pod and container hardening shared by the services and the migration jobs. */}}
{{- define "enlace.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "enlace.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The environment variable that carries a service's database URL: <SERVICE>_DATABASE_URL. */}}
{{- define "enlace.databaseEnv" -}}
- name: {{ printf "%s_DATABASE_URL" (upper .service) }}
  valueFrom:
    secretKeyRef:
      name: {{ include "enlace.databaseSecret" . }}
      key: url
{{- end -}}

{{/* NetworkPolicy egress to DNS and to the PostgreSQL peers (services and migration jobs). */}}
{{- define "enlace.egressDnsAndDatabase" -}}
{{- if not .Values.networkPolicy.dns.to }}{{ fail "networkPolicy.dns.to is required: the cluster's DNS pods" }}{{ end }}
{{- if not .Values.networkPolicy.postgres.to }}
{{- /* An empty list would allow every address. */}}
{{- fail "networkPolicy.postgres.to is required: where the PostgreSQL servers are" }}
{{- end }}
- to:
    {{- toYaml .Values.networkPolicy.dns.to | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- to:
    {{- toYaml .Values.networkPolicy.postgres.to | nindent 4 }}
  ports:
    - {protocol: TCP, port: {{ int .Values.networkPolicy.postgres.port }}}
{{- end -}}
