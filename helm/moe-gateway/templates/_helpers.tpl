{{- define "moe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "moe.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "moe.versionLabels" . }}
{{- end -}}

{{/* Labels beside the selector's on pod templates. */}}
{{- define "moe.versionLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "moe.gatewaySelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* An expert's selector labels; the argument is (dict "root" $ "expert" $expert). */}}
{{- define "moe.expertSelector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: expert
moe.expert: {{ .expert.name }}
{{- end -}}

{{- define "moe.expertName" -}}
{{- printf "%s-expert-%s" (include "moe.fullname" .root) (.expert.name | lower | replace "_" "-" | replace "." "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The retraining job's image: the `train` target, which has what training needs and serving does not. */}}
{{- define "moe.trainImage" -}}
{{ .Values.retrain.image.repository | default (printf "%s-train" .Values.image.repository) }}:{{ .Values.retrain.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The router the retraining job retrains: retrain.router, else the config's first. */}}
{{- define "moe.retrainRouter" -}}
{{- .Values.retrain.router | default (dig "name" "" (first .Values.routing.routers | default dict)) -}}
{{- end -}}

{{- define "moe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "moe.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Where the gateway's writable state lives (emptyDirs on a read-only root filesystem). */}}
{{- define "moe.sqliteDir" -}}/var/lib/moe/data{{- end -}}
{{- define "moe.filesDir" -}}/var/lib/moe/files{{- end -}}
{{- define "moe.configPath" -}}/etc/moe/config.yaml{{- end -}}

{{- define "moe.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
# Ownership is fixed once, not walked file by file on every mount of a volume that keeps growing (the files PVC).
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "moe.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The environment every gateway-image container gets: the database and Redis from the Secret. */}}
{{- define "moe.databaseEnv" -}}
{{- if .Values.database.sqlite.enabled }}
- name: DATABASE_URL
  value: {{ printf "sqlite:///%s/moe.db" (include "moe.sqliteDir" .) | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.databaseUrlKey }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.redisUrlKey }}
{{- end }}
{{- end -}}

{{/* The migration command: wait for the database, then Alembic; one readable line when it fails. */}}
{{- define "moe.migrateCommand" -}}
- python
- -c
- {{ .Files.Get "files/migrate.py" | quote }}
- --wait-seconds
- {{ .Values.migrations.waitSeconds | quote }}
{{- end -}}

{{/* The Batch API's files: the shared claim, or this pod's own emptyDir (one replica only, guarded). */}}
{{- define "moe.filesVolume" -}}
{{- with .Values.gateway.files }}
- name: files
  {{- if .persistent }}
  persistentVolumeClaim:
    claimName: {{ .existingClaim | default (printf "%s-files" (include "moe.fullname" $)) }}
  {{- else }}
  emptyDir: {sizeLimit: {{ .size }}}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "moe.routersVolume" -}}
{{- if .Values.routers.persistence.enabled }}
- name: routers
  persistentVolumeClaim:
    claimName: {{ .Values.routers.persistence.existingClaim | default (printf "%s-routers" (include "moe.fullname" .)) }}
{{- end }}
{{- end -}}

{{/* An expert served by the chart: its Service URL; else the apiBase it names (none: litellm knows it). */}}
{{- define "moe.expertApiBase" -}}
{{- if .expert.model -}}
http://{{ include "moe.expertName" . }}:{{ .root.Values.vllm.port }}/v1
{{- else -}}
{{ .expert.apiBase | default "" }}
{{- end -}}
{{- end -}}

{{/* The name a vLLM server answers to (--served-model-name), which the gateway asks for. */}}
{{- define "moe.servedModel" -}}
{{- .expert.servedModelName | default .expert.name -}}
{{- end -}}
