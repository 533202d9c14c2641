{{/* The agents' NATS URL: workers.natsUrl, else the services' own. */}}
{{- define "hodei-provisioner.agentNatsUrl" -}}
{{- .Values.workers.natsUrl | default (include "hodei.platform" . | fromYaml).natsUrl -}}
{{- end -}}

{{/* The workers' namespace: workers.namespace, else the release's. */}}
{{- define "hodei-provisioner.workersNamespace" -}}
{{- .Values.workers.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "hodei-provisioner.env" -}}
{{- if .Values.workers.existingSecret }}
- name: HODEI_PROVISIONER_AGENT_NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.workers.existingSecret }}
      key: {{ .Values.workers.existingSecretKey | default "url" }}
{{- else }}
- name: HODEI_PROVISIONER_AGENT_NATS_URL
  value: {{ include "hodei-provisioner.agentNatsUrl" . | quote }}
{{- end }}
{{- if eq .Values.provider "local" }}
- name: HODEI_PROVISIONER_WORKERS_DIR
  value: /home/hodei/.hodei/workers
{{- end }}
{{- if .Values.natsKeysSecret }}
- name: HODEI_NATS_SIGNING_KEY
  value: /etc/hodei/nats-keys/signing.nk
- name: HODEI_NATS_OPERATOR_KEY
  value: /etc/hodei/nats-keys/operator.nk
- name: HODEI_NATS_SYSTEM_CREDS
  value: /etc/hodei/nats-keys/revoker.creds
{{- end }}
{{- end -}}

{{- define "hodei-provisioner.volumeMounts" -}}
{{- if .Values.natsKeysSecret }}
- name: nats-keys
  mountPath: /etc/hodei/nats-keys
  readOnly: true
{{- end }}
{{- if eq .Values.provider "local" }}
- name: home
  mountPath: /home/hodei
{{- end }}
{{- end -}}

{{- define "hodei-provisioner.volumes" -}}
{{- with .Values.natsKeysSecret }}
- name: nats-keys
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- if eq .Values.provider "local" }}
# The workers dir (agents' logs) and the HOME of agents and jobs.
- name: home
  {{- with .Values.home.sizeLimit }}
  emptyDir:
    sizeLimit: {{ . | quote }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The rest of a container running the `hodei` CLI against the platform's NATS. */}}
{{- define "hodei-provisioner.cliContainer" -}}
{{- $p := include "hodei.platform" . | fromYaml -}}
env:
  - name: HODEI_NATS_URL
    value: {{ $p.natsUrl | quote }}
  {{- if $p.credsSecret }}
  - name: HODEI_CREDS
    value: /etc/hodei/nats/hodei-cli.creds
  {{- end }}
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
resources:
  requests:
    cpu: 10m
    memory: 64Mi
  limits:
    memory: 256Mi
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if $p.credsSecret }}
  - name: nats-creds
    mountPath: /etc/hodei/nats
    readOnly: true
  {{- end }}
{{- end -}}
