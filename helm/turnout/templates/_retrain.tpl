{{/* The retraining pod template: `turnout flywheel run --route ROUTE` on the training image:
captures -> dataset -> QLoRA -> gate against the stable version -> push -> canary. */}}
{{- define "turnout.retrainPod" -}}
{{- $root := .root }}
{{- $retrain := $root.Values.retrain }}
metadata:
  labels:
    {{- include "turnout.labels" (dict "root" $root "component" "retrain") | nindent 4 }}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: train
      image: {{ include "turnout.trainingImage" $root | quote }}
      imagePullPolicy: {{ $retrain.image.pullPolicy }}
      args:
        {{- include "turnout.retrainArgs" . | nindent 8 }}
        {{- with $retrain.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        - name: TURNOUT_ADMIN_KEY
          valueFrom:
            secretKeyRef:
              name: {{ $retrain.adminKey.existingSecret | quote }}
              key: {{ $retrain.adminKey.key | quote }}
        {{- include "turnout.sharedEnv" $root | trim | nindent 8 }}
        {{- with $retrain.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml $retrain.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        runAsNonRoot: true
        capabilities:
          drop: [ALL]
      volumeMounts:
        - {name: config, mountPath: /etc/turnout/config, readOnly: true}
        - {name: capture, mountPath: /var/lib/turnout}
  volumes:
    - name: config
      configMap:
        name: {{ include "turnout.componentName" (dict "root" $root "component" "config") }}
    {{- include "turnout.captureVolume" $root | nindent 4 }}
  {{- with $retrain.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $retrain.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The retraining command's arguments (after the image's `turnout` entrypoint). */}}
{{- define "turnout.retrainArgs" -}}
{{- $root := .root }}
{{- $retrain := $root.Values.retrain }}
- flywheel
- run
- --route
- {{ .route | quote }}
- --config
- /etc/turnout/config/turnout.yaml
- --base-model
- {{ $retrain.baseModel | quote }}
- --work-root
- {{ $retrain.workRoot | quote }}
- --admin-url
- {{ printf "http://%s:%d" (include "turnout.componentName" (dict "root" $root "component" "admin")) (int $root.Values.gateway.adminPort) | quote }}
- --min-train-examples
- {{ $retrain.minTrainExamples | quote }}
{{- with $retrain.vllmUrl }}
- --vllm
- {{ . | quote }}
{{- end }}
{{- end }}
