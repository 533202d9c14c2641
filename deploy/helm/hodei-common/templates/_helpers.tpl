{{/* The templates every Hodei chart includes, with the including chart's context (`.`), so
     .Chart and .Values are that chart's. Each chart depends on this library chart through
     `file://../hodei-common`; `helm dependency build CHART` (no network needed) or
     `--dependency-update` copies it into the chart's charts/ folder. */}}

{{/* Name of the chart's objects: the release name, with the chart name unless it holds it;
     in a release named hodei... (the umbrella chart's), the chart name loses its own
     `hodei-`: release hodei makes hodei-api, not hodei-hodei-api. */}}
{{- define "hodei.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else if and (hasPrefix "hodei" .Release.Name) (hasPrefix "hodei-" .Chart.Name) -}}
{{- printf "%s-%s" .Release.Name (trimPrefix "hodei-" .Chart.Name) | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hodei.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hodei.labels" -}}
{{ include "hodei.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: hodei
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What must agree across the platform, as YAML (read it with `fromYaml`): each value is
     the umbrella chart's `global` one when set there, else the chart's own, so a service
     chart installed alone keeps working from its own values. */}}
{{- define "hodei.platform" -}}
{{- $g := .Values.global | default dict -}}
{{- $gi := $g.image | default dict -}}
{{- $gn := $g.nats | default dict -}}
{{- $gd := $g.database | default dict -}}
{{- $go := $g.otel | default dict -}}
{{- $gm := $g.metrics | default dict -}}
{{- $image := .Values.image | default dict -}}
{{- $nats := .Values.nats | default dict -}}
{{- $db := .Values.database | default dict -}}
{{- $otel := .Values.otel | default dict -}}
{{- $metrics := .Values.metrics | default dict -}}
image: {{ printf "%s:%s" ($gi.repository | default $image.repository) ($gi.tag | default $image.tag | default .Chart.AppVersion) | quote }}
pullPolicy: {{ $gi.pullPolicy | default $image.pullPolicy | default "IfNotPresent" | quote }}
imagePullSecrets: {{ $g.imagePullSecrets | default .Values.imagePullSecrets | default list | toJson }}
natsUrl: {{ $gn.url | default $nats.url | default "" | quote }}
credsSecret: {{ $gn.credsSecret | default $nats.credsSecret | default "" | quote }}
natsSecret: {{ $gn.existingSecret | default $nats.existingSecret | default "" | quote }}
dbSecret: {{ $gd.existingSecret | default $db.existingSecret | default "" | quote }}
dbSecretKey: {{ $gd.existingSecretKey | default $db.existingSecretKey | default "url" | quote }}
dbUrl: {{ $gd.url | default $db.url | default "" | quote }}
otelEndpoint: {{ $go.endpoint | default $otel.endpoint | default "" | quote }}
metricsPort: {{ $gm.port | default $metrics.port | default 9464 | int }}
logLevel: {{ $g.logLevel | default .Values.logLevel | default "INFO" | quote }}
{{- end -}}

{{- define "hodei.image" -}}
{{ (include "hodei.platform" . | fromYaml).image }}
{{- end -}}

{{/* The plain (not secret) settings of a Hodei process: the data of its ConfigMap, whose
     checksum rolls the pods when one changes. */}}
{{- define "hodei.config" -}}
{{- $p := include "hodei.platform" . | fromYaml -}}
{{- with $p.natsUrl }}
HODEI_NATS_URL: {{ . | quote }}
{{- end }}
{{- if $p.credsSecret }}
HODEI_CREDS: {{ printf "/etc/hodei/nats/%s.creds" .Chart.Name | quote }}
{{- end }}
{{- if and (not $p.dbSecret) $p.dbUrl }}
HODEI_DATABASE_URL: {{ $p.dbUrl | quote }}
{{- end }}
{{- with .Values.drainGraceSeconds }}
HODEI_DRAIN_GRACE_S: {{ . | quote }}
{{- end }}
HODEI_LOG_LEVEL: {{ $p.logLevel | quote }}
{{- with $p.otelEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- if .Values.metrics }}
HODEI_METRICS_ADDR: {{ printf "0.0.0.0:%d" (int $p.metricsPort) | quote }}
{{- end }}
{{- end -}}

{{/* The secret settings, each from its Secret, never written into a manifest. */}}
{{- define "hodei.secretEnv" -}}
{{- $p := include "hodei.platform" . | fromYaml -}}
{{- with $p.natsSecret }}
- name: HODEI_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: user
- name: HODEI_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: password
{{- end }}
{{- if $p.dbSecret }}
- name: HODEI_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $p.dbSecret }}
      key: {{ $p.dbSecretKey }}
{{- else if not $p.dbUrl }}
{{- fail "set database.existingSecret (a Secret holding the PostgreSQL URL) or database.url" }}
{{- end }}
{{- end -}}

{{/* The service's own NATS user: of the creds Secret (the creds files `hodei auth init`
     writes, one key per identity), only this chart's `<chart name>.creds` is mounted,
     read-only and readable by the pod's group alone, where HODEI_CREDS points. */}}
{{- define "hodei.natsCreds.volumeMount" -}}
- name: nats-creds
  mountPath: /etc/hodei/nats
  readOnly: true
{{- end -}}

{{- define "hodei.natsCreds.volume" -}}
{{- $p := include "hodei.platform" . | fromYaml -}}
{{- $name := printf "%s.creds" .Chart.Name -}}
- name: nats-creds
  secret:
    secretName: {{ $p.credsSecret }}
    defaultMode: 0440
    items:
      - key: {{ $name }}
        path: {{ $name }}
{{- end -}}

{{/* A number as env text: whole numbers without an exponent (YAML numbers reach templates
     as floats, which print 1209600 as 1.2096e+06). */}}
{{- define "hodei.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}
