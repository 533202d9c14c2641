{{/* Everything one Hodei service chart installs, from one include in its templates:
       {{ include "hodei.service" (dict "root" . "component" "api") }}
     renders its ConfigMap, ServiceAccount, Deployment, metrics Service, PodDisruptionBudget
     and, when enabled, its NetworkPolicy and ServiceMonitor. The container runs
     `hodei service <component>`. A chart needing more passes YAML strings:
       "env"          more container env (a list),
       "volumeMounts" and "volumes" (lists),
       "podSpec"      more pod spec fields (a map, e.g. shareProcessNamespace),
       "kubeApi"      true: the pod gets its service account token (it calls the
                      Kubernetes API), and the chart may run a Role on that account. */}}
{{- define "hodei.service" -}}
{{- $root := .root -}}
{{- $_ := required "nats.url (or global.nats.url) is required" (include "hodei.platform" $root | fromYaml).natsUrl -}}
{{- include "hodei.configmap" $root }}
---
{{ include "hodei.serviceaccount" (dict "root" $root "kubeApi" .kubeApi) }}
---
{{ include "hodei.deployment" . }}
---
{{ include "hodei.metricsService" $root }}
{{- if $root.Values.podDisruptionBudget.enabled }}
---
{{ include "hodei.pdb" $root }}
{{- end }}
{{- if $root.Values.networkPolicy.enabled }}
---
{{ include "hodei.networkPolicy" $root }}
{{- end }}
{{- if $root.Values.serviceMonitor.enabled }}
---
{{ include "hodei.serviceMonitor" $root }}
{{- end }}
{{- end -}}

{{- define "hodei.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "hodei.fullname" . }}
  labels:
    {{- include "hodei.labels" . | nindent 4 }}
data:
  {{- include "hodei.config" . | trim | nindent 2 }}
{{- end -}}

{{/* Its own account, so that RBAC (none but the provisioner's) names this service alone. */}}
{{- define "hodei.serviceaccount" -}}
{{- $root := .root -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "hodei.fullname" $root }}
  labels:
    {{- include "hodei.labels" $root | nindent 4 }}
automountServiceAccountToken: {{ .kubeApi | default false }}
{{- end -}}

{{- define "hodei.deployment" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $p := include "hodei.platform" $root | fromYaml -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "hodei.fullname" $root }}
  labels:
    {{- include "hodei.labels" $root | nindent 4 }}
spec:
  replicas: {{ ternary .replicas $v.replicaCount (hasKey . "replicas") }}
  selector:
    matchLabels:
      {{- include "hodei.selectorLabels" $root | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "hodei.labels" $root | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # A changed setting rolls the pods (env from a ConfigMap is read at start only).
        checksum/config: {{ include "hodei.config" $root | sha256sum }}
        {{- if $v.metrics.annotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $p.metricsPort | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "hodei.fullname" $root }}
      # Only a service that calls the Kubernetes API gets a token.
      automountServiceAccountToken: {{ .kubeApi | default false }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | default (add (int $v.drainGraceSeconds) 5) }}
      {{- with $p.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      {{- with .podSpec }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ $p.image | quote }}
          imagePullPolicy: {{ $p.pullPolicy }}
          command: ["hodei", "service", {{ .component | quote }}]
          envFrom:
            - configMapRef:
                name: {{ include "hodei.fullname" $root }}
          {{- $env := printf "%s\n%s" (.env | default "" | trim) (include "hodei.secretEnv" $root | trim) | trim }}
          {{- if or $env $v.extraEnv }}
          env:
            {{- with $env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $p.metricsPort }}
              protocol: TCP
          {{- if $v.probes.enabled }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            {{- toYaml $v.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            {{- toYaml $v.probes.readiness | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $p.credsSecret }}
            {{- include "hodei.natsCreds.volumeMount" $root | nindent 12 }}
            {{- end }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        # The root filesystem is read-only; Python and libraries may still want a /tmp.
        - name: tmp
          emptyDir: {}
        {{- if $p.credsSecret }}
        {{- include "hodei.natsCreds.volume" $root | nindent 8 }}
        {{- end }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* For Prometheus (and the ServiceMonitor): the pods' /metrics, by name. */}}
{{- define "hodei.metricsService" -}}
{{- $p := include "hodei.platform" . | fromYaml -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "hodei.fullname" . }}-metrics
  labels:
    {{- include "hodei.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "hodei.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: {{ $p.metricsPort }}
      targetPort: metrics
      protocol: TCP
{{- end -}}

{{/* A node drain takes one pod at a time: the others keep serving (each drains its
     in-flight work on SIGTERM). */}}
{{- define "hodei.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "hodei.fullname" . }}
  labels:
    {{- include "hodei.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "hodei.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* A service takes no connection but Prometheus': it only dials out (NATS, PostgreSQL,
     the Kubernetes API). Ingress is the metrics port, from the peers named. */}}
{{- define "hodei.networkPolicy" -}}
{{- $p := include "hodei.platform" . | fromYaml -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "hodei.fullname" . }}
  labels:
    {{- include "hodei.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "hodei.selectorLabels" . | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    {{- if .Values.networkPolicy.metricsFrom }}
    - from:
        {{- toYaml .Values.networkPolicy.metricsFrom | nindent 8 }}
      ports:
        - port: {{ $p.metricsPort }}
          protocol: TCP
    {{- else }} []
    {{- end }}
{{- end -}}

{{- define "hodei.serviceMonitor" -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "hodei.fullname" . }}
  labels:
    {{- include "hodei.labels" . | nindent 4 }}
    {{- with .Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "hodei.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ .Values.serviceMonitor.interval }}
{{- end -}}
