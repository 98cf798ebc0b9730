{{/* Names, labels and the few values derived in more than one template. */}}

{{- define "turnout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.fullname" -}}
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

{{/* A component's name: "<fullname>-<component>", cut to fit a DNS label. */}}
{{- define "turnout.componentName" -}}
{{- printf "%s-%s" (include "turnout.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "turnout.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "turnout.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "turnout.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: turnout
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "turnout.gatewayImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "turnout.trainingImage" -}}
{{- $tag := default (printf "%s-training" (default .Chart.AppVersion .Values.image.tag)) .Values.retrain.image.tag }}
{{- printf "%s:%s" (default .Values.image.repository .Values.retrain.image.repository) $tag }}
{{- end }}

{{/* One backend per vLLM pod, by its stable StatefulSet name. */}}
{{- define "turnout.vllmBackends" -}}
{{- $name := include "turnout.componentName" (dict "root" . "component" "vllm") }}
{{- $backends := list }}
{{- range $i := until (int .Values.vllm.replicas) }}
{{- $backends = append $backends (dict "url" (printf "http://%s-%d.%s:%d" $name $i $name (int $.Values.vllm.service.port))) }}
{{- end }}
{{- toYaml $backends }}
{{- end }}

{{/* The Turnout config file as the gateway reads it: .Values.config, backends defaulted. */}}
{{- define "turnout.configFile" -}}
{{- $config := deepCopy .Values.config }}
{{- if not $config.backends }}
{{- if not .Values.vllm.enabled }}
{{- fail "config.backends is empty and vllm.enabled is false: name the vLLM servers in config.backends" }}
{{- end }}
{{- $_ := set $config "backends" (include "turnout.vllmBackends" . | fromYamlArray) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{- define "turnout.gatewayPort" -}}
{{- $server := default dict .Values.config.server }}
{{- default 8080 $server.port | int }}
{{- end }}

{{- define "turnout.authSecretName" -}}
{{- default (include "turnout.componentName" (dict "root" . "component" "auth")) .Values.auth.existingSecret }}
{{- end }}

{{- define "turnout.authEnabled" -}}
{{- if or .Values.auth.existingSecret .Values.auth.apiKeys .Values.auth.adminKeys }}true{{ end }}
{{- end }}

{{- define "turnout.objectStoreSecretName" -}}
{{- default (include "turnout.componentName" (dict "root" . "component" "object-store")) .Values.objectStore.existingSecret }}
{{- end }}

{{- define "turnout.objectStoreEnabled" -}}
{{- if or .Values.objectStore.existingSecret .Values.objectStore.accessKeyId }}true{{ end }}
{{- end }}

{{/* Environment every Turnout process (gateway, retraining) gets: shared state and credentials. */}}
{{- define "turnout.sharedEnv" -}}
{{- if .Values.redis.existingSecret }}
- name: TURNOUT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.externalUrl }}
- name: TURNOUT_REDIS_URL
  value: {{ .Values.redis.externalUrl | quote }}
{{- else if .Values.redis.bundled.enabled }}
- name: TURNOUT_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "turnout.componentName" (dict "root" . "component" "redis")) | quote }}
{{- end }}
{{- if include "turnout.objectStoreEnabled" . }}
{{- $secret := include "turnout.objectStoreSecretName" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: AWS_SECRET_ACCESS_KEY}
- name: AWS_ENDPOINT_URL
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: AWS_ENDPOINT_URL, optional: true}
{{- end }}
{{- end }}

{{- define "turnout.redisConfigured" -}}
{{- if or .Values.redis.existingSecret .Values.redis.externalUrl .Values.redis.bundled.enabled }}true{{ end }}
{{- end }}

{{/* The capture volume: a shared claim when one is named, else scratch space per pod. */}}
{{- define "turnout.captureVolume" -}}
- name: capture
{{- if .Values.capture.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.capture.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.capture.emptyDirSizeLimit }}
{{- end }}
{{- end }}

{{- define "turnout.restrictedSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}
