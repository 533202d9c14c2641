{{/* The templates every Hodei chart includes, with the including chart's context (`.`), so
     .Chart and .Values are that chart's. Each chart depends on this library chart through
     `file://../hodei-common`; `helm dependency build CHART` (no network needed) or
     `--dependency-update` copies it into the chart's charts/ folder. */}}

{{/* Name of the chart's objects: the release name, with the chart name unless it holds it. */}}
{{- define "hodei.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
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

{{- define "hodei.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The environment every Hodei process reads: where NATS and PostgreSQL are. */}}
{{- define "hodei.env" -}}
{{- with .Values.nats.url }}
- name: HODEI_NATS_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.nats.credsSecret }}
- name: HODEI_CREDS
  value: {{ printf "/etc/hodei/nats/%s.creds" .Chart.Name | quote }}
{{- end }}
{{- with .Values.nats.existingSecret }}
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
{{- if .Values.database.existingSecret }}
- name: HODEI_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey | default "url" }}
{{- else if .Values.database.url }}
- name: HODEI_DATABASE_URL
  value: {{ .Values.database.url | quote }}
{{- else }}
{{- fail "set database.existingSecret (a Secret holding the PostgreSQL URL) or database.url" }}
{{- end }}
{{- with .Values.drainGraceSeconds }}
- name: HODEI_DRAIN_GRACE_S
  value: {{ . | quote }}
{{- end }}
- name: HODEI_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}


{{/* The service's own NATS user: of nats.credsSecret (the creds files `hodei auth init`
     writes, one key per service), only this chart's `<chart name>.creds` is mounted, read-only
     and readable by the pod's group alone, where HODEI_CREDS (hodei.env) points. Included
     when nats.credsSecret is set. */}}
{{- define "hodei.natsCreds.volumeMount" -}}
- name: nats-creds
  mountPath: /etc/hodei/nats
  readOnly: true
{{- end -}}

{{- define "hodei.natsCreds.volume" -}}
- name: nats-creds
  secret:
    secretName: {{ .Values.nats.credsSecret }}
    defaultMode: 0440
    items:
      - key: {{ printf "%s.creds" .Chart.Name }}
        path: {{ printf "%s.creds" .Chart.Name }}
{{- end -}}
