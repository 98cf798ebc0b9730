{{/* The retraining pod template: `turnout train ROUTE` on the training image. */}}
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
        - train
        - {{ .route | quote }}
        {{- with $retrain.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
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
