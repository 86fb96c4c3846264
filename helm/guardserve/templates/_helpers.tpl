{{/* Chart name, truncated to the 63 characters that DNS labels allow. */}}
{{- define "guardserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release name plus chart name, unless one contains the other. */}}
{{- define "guardserve.fullname" -}}
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

{{- define "guardserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "guardserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "guardserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "guardserve.labels" -}}
helm.sh/chart: {{ include "guardserve.chart" . }}
{{ include "guardserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference-server
{{- end }}

{{- define "guardserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "guardserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "guardserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the Secret that holds the API key. */}}
{{- define "guardserve.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "guardserve.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{/* Name of the claim that holds the model cache. */}}
{{- define "guardserve.cacheClaimName" -}}
{{- default (printf "%s-model-cache" (include "guardserve.fullname" .)) .Values.modelCache.persistence.existingClaim }}
{{- end }}

{{/*
Server flags that are set, as a YAML map from flag name (without "--") to its value as a
string. Null and empty values are left out so the server's own defaults apply. The
ConfigMap stores them; the Deployment passes each one as --flag=$(ENV) from that ConfigMap.
*/}}
{{- define "guardserve.serverFlags" -}}
{{- $s := .Values.server }}
{{- $flags := dict
  "model" $s.model
  "served-model-name" $s.servedModelName
  "port" $s.port
  "max-model-len" $s.maxModelLen
  "max-num-seqs" $s.maxNumSeqs
  "dtype" $s.dtype
  "max-prefill-tokens" $s.maxPrefillTokens
  "tensor-parallel-size" $s.tensorParallelSize
  "data-parallel-size" $s.dataParallelSize
  "gpu-memory-utilization" $s.gpuMemoryUtilization
  "plain-engine" $s.plainEngine
  "guard-default" $s.guardDefault
  "max-queue" $s.maxQueue
  "request-timeout" $s.requestTimeout
  "shutdown-grace-period" $s.shutdownGracePeriod
  "stream-keepalive-interval" $s.streamKeepaliveInterval
}}
{{- range $flag, $value := $flags }}
{{- if not (kindIs "invalid" $value) }}
{{- if ne (toString $value) "" }}
{{ $flag }}: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment variable name that carries a server flag, e.g. max-model-len -> GUARDSERVE_ARG_MAX_MODEL_LEN. */}}
{{- define "guardserve.flagEnv" -}}
{{- printf "GUARDSERVE_ARG_%s" (. | upper | replace "-" "_") }}
{{- end }}

{{/* Seconds Kubernetes waits after SIGTERM: preStop sleep, the server's drain, a margin. */}}
{{- define "guardserve.terminationGracePeriod" -}}
{{- $preStop := ternary (int .Values.preStop.sleepSeconds) 0 .Values.preStop.enabled }}
{{- add $preStop (int .Values.server.shutdownGracePeriod) (int .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/* Checks across values that the JSON schema cannot express; fails the render. */}}
{{- define "guardserve.validate" -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (eq .Values.autoscaling.engine "hpa") (lt (int .Values.autoscaling.minReplicas) 1) }}
{{- fail "autoscaling.minReplicas must be at least 1 with engine hpa (scale to zero needs engine keda)" }}
{{- end }}
{{- if .Values.gpu.enabled }}
{{- $tp := int (default 1 .Values.server.tensorParallelSize) }}
{{- $dp := int (default 1 .Values.server.dataParallelSize) }}
{{- if lt (int .Values.gpu.count) (mul $tp $dp) }}
{{- fail (printf "gpu.count (%d) must be at least tensorParallelSize x dataParallelSize (%d)" (int .Values.gpu.count) (mul $tp $dp)) }}
{{- end }}
{{- end }}
{{- end }}
