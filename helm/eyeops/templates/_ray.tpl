{{/* Pod template of a Ray head or worker (call with dict "root" . "component" c "ray" "head|worker"
"resources" r "gpu" n "nodeSelector" m "tolerations" t "serve" bool "autoscaler" bool "labels" extra).
Ray needs a writable /tmp (sessions, logs) and an in-memory /dev/shm (object store); both are
emptyDirs, so the root filesystem stays read-only. Serving pods load models into /tmp (HOME), so
theirs is modelCacheSize. "autoscaler": the head of a cluster with enableInTreeAutoscaling, whose
KubeRay sidecar lists/patches pods and patches the RayCluster with this pod's ServiceAccount token
(rbac.yaml grants the Ray account that; the ray-autoscaler NetworkPolicy lets it reach the API). */}}
{{- define "eyeops.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $settings := include "eyeops.podSettings" $root | fromJson -}}
{{- $autoscaler := and (default false .autoscaler) (eq .ray "head") -}}
metadata:
  labels:
    {{- include "eyeops.labels" (dict "root" $root "component" .component) | nindent 4 }}
    {{ $settings.labels.rayNode }}: {{ .ray }}
    {{- toYaml $settings.labels.clients | nindent 4 }}
    {{- if $autoscaler }}
    {{- toYaml $settings.labels.autoscaler | nindent 4 }}
    {{- end }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "eyeops.componentName" (dict "root" $root "suffix" "ray") }}
  automountServiceAccountToken: {{ $autoscaler }}
  securityContext:
    {{- include "eyeops.podSecurityContext" (dict "root" $root) | nindent 4 }}
  {{- with include "eyeops.imagePullSecrets" $root }}{{ . | nindent 2 }}{{ end }}
  {{- with .nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ .ray }}
      image: {{ .image | default (include "eyeops.trainerImage" $root) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      env:
        {{- include "eyeops.commonEnv" $root | nindent 8 }}
        {{- with include "eyeops.hfTokenEnv" $root }}{{ . | nindent 8 }}{{ end }}
        - name: RAY_USAGE_STATS_ENABLED
          value: "0"
        # Join the cluster KubeRay started instead of starting a local Ray.
        - name: EYEOPS_RAY_ADDRESS
          value: auto
        {{- if .serve }}
        {{- include "eyeops.apiKeysEnv" $root | nindent 8 }}
        {{- end }}
      {{- if eq .ray "head" }}
      ports:
        - {name: gcs, containerPort: 6379, protocol: TCP}
        - {name: dashboard, containerPort: 8265, protocol: TCP}
        - {name: client, containerPort: 10001, protocol: TCP}
        {{- if .serve }}
        - {name: serve, containerPort: 8000, protocol: TCP}
        {{- end }}
      {{- else if .serve }}
      ports:
        - {name: serve, containerPort: 8000, protocol: TCP}
      {{- end }}
      resources:
        {{- include "eyeops.resources" (dict "resources" .resources "gpu" (default 0 .gpu)) | nindent 8 }}
      securityContext:
        {{- include "eyeops.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        - {name: shm, mountPath: /dev/shm}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ ternary $root.Values.modelCacheSize $settings.volumeSizes.rayTmp (default false .serve) }}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $root.Values.training.shmSize | default $settings.volumeSizes.shm }}
{{- end -}}

{{/* Autoscaler sidecar settings (pod-settings): KubeRay injects the container, we make it
restricted too. */}}
{{- define "eyeops.rayAutoscalerOptions" -}}
{{- toYaml (include "eyeops.podSettings" . | fromJson).rayAutoscalerOptions }}
securityContext:
  {{- include "eyeops.containerSecurityContext" . | nindent 2 }}
{{- end -}}

{{/* The training cluster: a CPU head that schedules and the worker groups from values. Shared by
the RayCluster, the one-shot RayJob and the RayJob template the pipeline submits. */}}
{{- define "eyeops.trainingClusterSpec" -}}
{{- $root := . -}}
rayVersion: {{ .Values.training.rayVersion | quote }}
enableInTreeAutoscaling: true
autoscalerOptions:
  {{- include "eyeops.rayAutoscalerOptions" $root | nindent 2 }}
headGroupSpec:
  rayStartParams:
    dashboard-host: "0.0.0.0"
    num-cpus: "0"
  template:
    {{- include "eyeops.rayPodTemplate" (dict "root" $root "component" "training" "ray" "head" "autoscaler" true "resources" .Values.training.head.resources "gpu" 0 "nodeSelector" .Values.training.head.nodeSelector "tolerations" .Values.training.head.tolerations) | nindent 4 }}
workerGroupSpecs:
  {{- range $group := .Values.training.workerGroups }}
  {{- if gt (int $group.minReplicas) (int $group.maxReplicas) }}
  {{- fail (printf "training.workerGroups[%s]: minReplicas %v > maxReplicas %v" $group.name $group.minReplicas $group.maxReplicas) }}
  {{- end }}
  - groupName: {{ $group.name }}
    replicas: {{ $group.replicas }}
    minReplicas: {{ $group.minReplicas }}
    maxReplicas: {{ $group.maxReplicas }}
    rayStartParams: {}
    template:
      {{- include "eyeops.rayPodTemplate" (dict "root" $root "component" "training" "ray" "worker" "resources" $group.resources "gpu" $group.gpu "nodeSelector" $group.nodeSelector "tolerations" $group.tolerations "labels" (dict "eyeops.io/worker-group" $group.name)) | nindent 6 }}
  {{- end }}
{{- end -}}

{{/* A training RayJob (call with dict "root" . "name" n "recipe" r "datasetJson" j "runName" rn). The
entrypoint is the pipeline room's `python -m eyeops.train.job`; checkpoints and the resulting
CheckpointRef go under the S3 storage root, where every pod and the waiting pipeline step see them. */}}
{{- define "eyeops.trainingRayJob" -}}
{{- $root := .root -}}
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "eyeops.labels" (dict "root" $root "component" "training") | nindent 4 }}
spec:
  # The pipeline room's entry point: argument parsing around eyeops.train.train.
  {{- $root := .root }}
  {{- $storage := printf "%s/ray" (trimSuffix "/" $root.Values.s3.storageRoot) }}
  {{- $refOut := printf "%s/runs/%s/checkpoint_ref.json" (trimSuffix "/" $root.Values.s3.storageRoot) .runName }}
  entrypoint: {{ printf "python -m eyeops.train.job --recipe %s --dataset-json %s --run-name %s --storage-path %s --ref-out %s" .recipe (squote .datasetJson) .runName $storage $refOut | quote }}
  shutdownAfterJobFinishes: true
  ttlSecondsAfterFinished: {{ $root.Values.training.job.ttlSecondsAfterFinished }}
  backoffLimit: {{ $root.Values.training.job.backoffLimit }}
  submissionMode: K8sJobMode
  submitterPodTemplate:
    metadata:
      labels:
        {{- include "eyeops.labels" (dict "root" $root "component" "training") | nindent 8 }}
        {{ (include "eyeops.podSettings" $root | fromJson).labels.rayNode }}: submitter
    spec:
      restartPolicy: Never
      serviceAccountName: {{ include "eyeops.componentName" (dict "root" $root "suffix" "ray") }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "eyeops.podSecurityContext" (dict "root" $root) | nindent 8 }}
      containers:
        - name: ray-job-submitter
          image: {{ include "eyeops.trainerImage" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          env:
            - {name: HOME, value: /tmp}
          resources:
            {{- toYaml (include "eyeops.podSettings" $root | fromJson).submitterResources | nindent 12 }}
          securityContext:
            {{- include "eyeops.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "eyeops.tmpMount" $root | nindent 12 }}
      volumes:
        {{- include "eyeops.tmpVolume" $root | nindent 8 }}
  rayClusterSpec:
    {{- include "eyeops.trainingClusterSpec" $root | nindent 4 }}
{{- end -}}
