{{/* Names: 63-character DNS labels, as every Kubernetes name and label value must be. */}}
{{- define "eyeops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eyeops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<suffix>, truncated (call with dict "root" . "suffix" "x"). */}}
{{- define "eyeops.componentName" -}}
{{- printf "%s-%s" (include "eyeops.fullname" .root) .suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eyeops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (never add chart version here). */}}
{{- define "eyeops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eyeops.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The standard app.kubernetes.io/* label block (call with dict "root" . "component" "x"). */}}
{{- define "eyeops.labels" -}}
helm.sh/chart: {{ include "eyeops.chart" .root }}
{{ include "eyeops.selectorLabels" . }}
app.kubernetes.io/part-of: eyeops
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Images: registry/repository:tag, or @digest when the tag is a sha256 digest. */}}
{{- define "eyeops.imageRef" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- $sep := ternary "@" ":" (hasPrefix "sha256:" $tag) -}}
{{- if .registry -}}{{ printf "%s/%s%s%s" .registry .image.repository $sep $tag }}{{- else -}}{{ printf "%s%s%s" .image.repository $sep $tag }}{{- end -}}
{{- end -}}

{{- define "eyeops.serverImage" -}}
{{- include "eyeops.imageRef" (dict "root" . "registry" .Values.image.registry "image" .Values.image.server) -}}
{{- end -}}

{{- define "eyeops.trainerImage" -}}
{{- include "eyeops.imageRef" (dict "root" . "registry" .Values.image.registry "image" .Values.image.trainer) -}}
{{- end -}}

{{/* The pod settings shared with the pods the pipeline creates (call with the root context):
files/pod-settings.yaml, a copy of platform/eyeops/kube/pod_settings.yaml, the one source of
security contexts, emptyDir sizes and policy labels (`python -m eyeops.chart.pod_settings`). */}}
{{- define "eyeops.podSettings" -}}
{{- $text := .Files.Get "files/pod-settings.yaml" -}}
{{- if not $text -}}
{{- fail "files/pod-settings.yaml is missing: run `python -m eyeops.chart.pod_settings` in the eyeops checkout" -}}
{{- end -}}
{{- $text | fromYaml | toJson -}}
{{- end -}}

{{/* Pod-level security context of the restricted profile (call with dict "root" . ["runAsUser" N]):
pod-settings' ids unless values podSecurity.* (or runAsUser, for a non-eyeops image) say otherwise. */}}
{{- define "eyeops.podSecurityContext" -}}
{{- $ctx := (include "eyeops.podSettings" .root | fromJson).podSecurityContext -}}
{{- $v := .root.Values.podSecurity -}}
{{- range $key := list "runAsUser" "runAsGroup" "fsGroup" -}}
{{- $_ := set $ctx $key ($.runAsUser | default (get $v $key) | default (get $ctx $key) | int64) -}}
{{- end -}}
{{- toYaml $ctx -}}
{{- end -}}

{{/* Container-level security context: identical for every container (pod-settings). */}}
{{- define "eyeops.containerSecurityContext" -}}
{{- toYaml (include "eyeops.podSettings" . | fromJson).containerSecurityContext -}}
{{- end -}}

{{/* Labels of a pod that reaches MLflow and S3: the NetworkPolicies select these (pod-settings). */}}
{{- define "eyeops.clientLabels" -}}
{{- toYaml (include "eyeops.podSettings" . | fromJson).labels.clients -}}
{{- end -}}

{{/* imagePullSecrets block, or nothing (use as: with include ... | nindent N). */}}
{{- define "eyeops.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* Service URLs inside the cluster. */}}
{{- define "eyeops.mlflowHost" -}}
{{- printf "%s.%s.svc" (include "eyeops.componentName" (dict "root" . "suffix" "mlflow")) .Release.Namespace -}}
{{- end -}}

{{- define "eyeops.mlflowURL" -}}
{{- printf "http://%s:%v" (include "eyeops.mlflowHost" .) .Values.mlflow.port -}}
{{- end -}}

{{/* Environment every eyeops process shares: settings, MLflow, S3 credentials by reference. */}}
{{- define "eyeops.commonEnv" -}}
- name: HOME
  value: /tmp
- name: EYEOPS_MODE
  value: cluster
- name: EYEOPS_STORAGE_ROOT
  value: {{ .Values.s3.storageRoot | quote }}
- name: EYEOPS_KUBE_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: EYEOPS_MLFLOW_TRACKING_URI
  value: {{ include "eyeops.mlflowURL" . | quote }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "eyeops.mlflowURL" . | quote }}
- name: HF_HUB_OFFLINE
  value: {{ include "eyeops.hfHubOffline" . | quote }}
{{ include "eyeops.s3Env" . }}
{{- end -}}

{{- define "eyeops.hfHubOffline" -}}
{{- ternary "1" "0" .Values.hfHubOffline -}}
{{- end -}}

{{- define "eyeops.s3Env" -}}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- with .Values.s3.endpoint }}
- name: EYEOPS_S3_ENDPOINT_URL
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.secretAccessKeyKey }}
{{- end -}}

{{/* Writable scratch for a read-only root filesystem. */}}
{{- define "eyeops.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ (include "eyeops.podSettings" . | fromJson).volumeSizes.tmp }}
{{- end -}}

{{/* /tmp of a pod that loads models (gateway, predictors, RayService pods): HOME=/tmp, so the
downloaded MLflow model, the Hugging Face cache and converted base models land here. */}}
{{- define "eyeops.modelTmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.modelCacheSize }}
{{- end -}}

{{- define "eyeops.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* GPU-aware resources: requests/limits from values plus nvidia.com/gpu when gpu > 0. */}}
{{- define "eyeops.resources" -}}
{{- $res := deepCopy .resources -}}
{{- if gt (int .gpu) 0 -}}
{{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (int .gpu)) (default dict $res.limits)) -}}
{{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" (int .gpu)) (default dict $res.requests)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Fail with a clear message when the cluster does not serve an API the release needs. */}}
{{- define "eyeops.requireAPI" -}}
{{- if and .root.Values.preflight.requireCRDs (not (.root.Capabilities.APIVersions.Has .api)) -}}
{{- fail (printf "\n\nthe cluster does not serve %s, which %s needs: install %s first (docs/operations.md#prerequisites).\nRendering offline? Pass --api-versions %s, or set preflight.requireCRDs=false." .api .what .project .api) -}}
{{- end -}}
{{- end -}}

{{/* The model entry the gateway fronts (fails when gateway.model names none). */}}
{{- define "eyeops.gatewayModel" -}}
{{- $found := dict -}}
{{- $names := list -}}
{{- range .Values.models -}}
{{- $names = append $names .name -}}
{{- if eq .name $.Values.gateway.model -}}{{- $found = include "eyeops.model" . | fromJson -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "gateway.model %q names no entry in models (known: %s)" .Values.gateway.model (join ", " $names)) -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/* One `models` entry with its defaults filled in (list entries get no defaults from values.yaml).
Its device must fit its GPUs as eyeops.devices.gpus_for says: cuda:N needs gpu > N, cpu none. */}}
{{- define "eyeops.model" -}}
{{- $defaults := dict "alias" "champion" "storageUri" "" "minReplicas" 1 "maxReplicas" 2 "autoscaler" "hpa" "scaleMetric" "cpu" "scaleTarget" 70 "targetOngoingRequests" 4 "maxBatchSize" 16 "gpu" 0 "nodeSelector" dict "tolerations" list "runtime" "eyeops" "maxModelLen" 4096 "device" "" -}}
{{- $m := merge (deepCopy .) $defaults -}}
{{- if hasPrefix "cuda" $m.device -}}
{{- $needed := add1 (int (default "0" (regexReplaceAll "^cuda:?" $m.device ""))) -}}
{{- if lt (int $m.gpu) $needed -}}
{{- fail (printf "models[%s]: device %s needs gpu >= %d (GPUs per replica), got %v" $m.name $m.device $needed $m.gpu) -}}
{{- end -}}
{{- else if and (eq $m.device "cpu") (gt (int $m.gpu) 0) -}}
{{- fail (printf "models[%s]: device cpu with gpu %v: the GPUs would sit idle" $m.name $m.gpu) -}}
{{- end -}}
{{- if and $m.device (eq $m.runtime "huggingface") -}}
{{- fail (printf "models[%s]: device is for the eyeops runtime; the huggingface runtime (vLLM) places the model on the pod's GPUs itself" $m.name) -}}
{{- end -}}
{{- toJson $m -}}
{{- end -}}

{{/* Name and labels of one NetworkPolicy (call with dict "root" . "suffix" "x"). */}}
{{- define "eyeops.netpolMeta" -}}
metadata:
  name: {{ include "eyeops.componentName" (dict "root" .root "suffix" (printf "netpol-%s" .suffix)) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "eyeops.labels" (dict "root" .root "component" "network") | nindent 4 }}
{{- end -}}

{{/* The Hugging Face token of gated hub repos (values huggingface.tokenSecret) for every pod that
loads models: the gateway, eyeops predictors, Ray pods. Nothing when no Secret is named. The env name
is PlatformSettings.hf_token_env's default, which these pods keep. */}}
{{- define "eyeops.hfTokenEnv" -}}
{{- with .Values.huggingface.tokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.huggingface.tokenSecret.key }}
      optional: false
{{- end }}
{{- end -}}

{{/* API keys for every process serving the gateway routes (gateway, KServe predictor, Ray Serve). */}}
{{- define "eyeops.apiKeysEnv" -}}
- name: EYEOPS_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.gateway.apiKeys.existingSecret }}
      key: {{ .Values.gateway.apiKeys.key }}
{{- end -}}
