{{/* ---------------------------------------------------------------- names and labels */}}
{{/* Names follow helm create's starter chart (helm/helm @ 0d1f9dad pkg/chart/v2/util/create.go, defaultHelpers):
     deploy.name_override replaces the chart name, deploy.fullname_override the whole base name. The Python copy
     is dsv3ctl.core.names.Names; tests/test_packaging.py checks they agree. */}}
{{- define "dsv3.name" -}}
{{- .Values.deploy.name_override | default "dsv3" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-scoped base name of every object (<= 40 characters so LWS pod, StatefulSet and
     controller-revision names stay under 63). */}}
{{- define "dsv3.fullname" -}}
{{- if .Values.deploy.fullname_override -}}
{{- .Values.deploy.fullname_override | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := .Values.deploy.name_override | default "dsv3" -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dsv3.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dsv3.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dsv3.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "dsv3.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dsv3ctl
{{- end -}}

{{/* Pod-template labels: no chart or app version, so a chart bump does not roll the groups. */}}
{{- define "dsv3.podLabels" -}}
{{ include "dsv3.selectorLabels" . }}
app.kubernetes.io/part-of: dsv3ctl
{{- end -}}

{{/* deploy.rdma.enabled: true/false as given; auto = on only when the group spans nodes (dsv3ctl plan says why). */}}
{{- define "dsv3.rdma" -}}
{{- $e := .Values.deploy.rdma.enabled -}}
{{- if kindIs "bool" $e -}}{{- if $e -}}true{{- end -}}
{{- else if gt (int .Values.parallelism.nodes) 1 -}}true{{- end -}}
{{- end -}}

{{/* The values that reach the pods: the spec with launch.rdma resolved as the templates resolve it. */}}
{{- define "dsv3.podValues" -}}
{{- $v := deepCopy .Values -}}
{{- $_ := set $v.launch "rdma" (eq (include "dsv3.rdma" .) "true") -}}
{{- /* deploy.platform is resolved by dsv3ctl into the other values (dsv3ctl.core.platforms); the name overrides
     shape object names only: the pods read none of them */}}
{{- $_ := set $v "deploy" (omit $v.deploy "platform" "name_override" "fullname_override") -}}
{{- toYaml $v -}}
{{- end -}}

{{/* The pod-template checksum: the spec without the keys that change no pod (group count, rollout, PDB,
     Service, ServiceMonitor, NetworkPolicy, helm test and its image, prepare Job, names, what only `dsv3ctl deploy --wait` reads), so scaling or a Service change
     does not roll the groups. */}}
{{- define "dsv3.podChecksum" -}}
{{- $v := include "dsv3.podValues" . | fromYaml -}}
{{- $_ := set $v "deploy" (omit $v.deploy "replicas" "max_surge" "max_unavailable" "pdb" "service_type" "service_monitor" "network_policy" "helm_test" "helm_test_image" "prepare" "namespace" "release" "max_recreations" "unschedulable_grace_s") -}}
{{- toJson $v | sha256sum -}}
{{- end -}}

{{- define "dsv3.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.serving.mode) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "dsv3.sshSecretName" -}}
{{- .Values.deploy.ssh_secret | default (printf "%s-ssh" (include "dsv3.fullname" .)) -}}
{{- end -}}

{{- define "dsv3.claimName" -}}
{{- .Values.deploy.storage.claim_name | default (printf "%s-models" (include "dsv3.fullname" .)) -}}
{{- end -}}

{{- define "dsv3.apiServiceName" -}}{{ include "dsv3.fullname" . }}-api{{- end -}}

{{/* trtllm-serve serves OpenAI on one port; tritonserver serves HTTP (KServe v2), gRPC and metrics. */}}
{{- define "dsv3.trtllmServe" -}}
{{- if and (eq .Values.serving.mode "llmapi") (eq .Values.serving.frontend "trtllm-serve") -}}true{{- end -}}
{{- end -}}

{{/* Leader startupProbe failureThreshold = ceil(serving.load_timeout_s / deploy.startup_probe_period_s). */}}
{{- define "dsv3.startupFailureThreshold" -}}
{{- $t := int .Values.serving.load_timeout_s -}}
{{- $p := int .Values.deploy.startup_probe_period_s -}}
{{- div (add $t (sub $p 1)) $p -}}
{{- end -}}

{{/* ---------------------------------------------------------------- derived-value guards */}}
{{- define "dsv3.validate" -}}
{{- $p := .Values.parallelism -}}
{{- $world := mul (int $p.nodes) (int $p.gpus_per_node) -}}
{{- if ne (mul (int $p.tp) (int $p.pp)) $world -}}
{{- fail (printf "parallelism: tp x pp = %d x %d must equal nodes x gpus_per_node = %d x %d = %d; set tp=%d with pp=1, or change nodes" (int $p.tp) (int $p.pp) (int $p.nodes) (int $p.gpus_per_node) $world $world) -}}
{{- end -}}
{{- if ne (mod (int $p.tp) (int $p.moe_ep)) 0 -}}
{{- fail (printf "parallelism.moe_ep=%d must divide tp=%d (moe_tp x moe_ep = tp)" (int $p.moe_ep) (int $p.tp)) -}}
{{- end -}}
{{- if and (eq .Values.serving.mode "engine") (ne (int $p.pp) 1) -}}
{{- fail (printf "parallelism.pp=%d: engine mode needs pp=1 (61 layers do not split); use tp=%d pp=1 or serving.mode=llmapi" (int $p.pp) $world) -}}
{{- end -}}
{{- if and (eq .Values.serving.frontend "trtllm-serve") (ne .Values.serving.mode "llmapi") -}}
{{- fail "serving.frontend=trtllm-serve needs serving.mode=llmapi; use frontend=tritonserver or mode=llmapi" -}}
{{- end -}}
{{- if ge (int .Values.serving.max_input_len) (int .Values.serving.max_seq_len) -}}
{{- fail (printf "serving.max_input_len=%d must be < max_seq_len=%d" (int .Values.serving.max_input_len) (int .Values.serving.max_seq_len)) -}}
{{- end -}}
{{- $s := .Values.deploy.storage -}}
{{- if and (eq $s.kind "existingClaim") (not $s.claim_name) -}}
{{- fail "deploy.storage.kind=existingClaim needs deploy.storage.claim_name (the PVC's name); or use kind=newClaim / hostPath" -}}
{{- end -}}
{{- $mount := printf "%s/" (trimSuffix "/" $s.mount_path) -}}
{{- range $k := list "model_repository" "model_dir" -}}
{{- $v := index $.Values.launch $k -}}
{{- if and $v (not (hasPrefix $mount (printf "%s/" $v))) -}}
{{- fail (printf "launch.%s=%s is not under deploy.storage.mount_path=%s; the pods would not see it" $k $v $s.mount_path) -}}
{{- end -}}
{{- end -}}
{{- $l := .Values.launch -}}
{{- $serving := list (int $l.http_port) (int $l.grpc_port) (int $l.metrics_port) (int .Values.deploy.openai_port) -}}
{{- if has (int $l.ssh_port) $serving -}}
{{- fail (printf "launch.ssh_port=%d collides with a serving port (http/grpc/metrics/openai); use 2222" (int $l.ssh_port)) -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- the pod template (leader or worker)
     The pod template is split into defines; each one's context is named in its comment. "ctx" below means
     the dict that dsv3.podTemplate builds:
       root  the chart's top-level context (.Values, .Release, .Chart)
       role  "leader" or "worker"
       rdma  true when the pods get the RDMA resource and IPC_LOCK (dsv3.rdma)
     Every define renders at column 0; the caller indents it (nindent). */}}

{{/* The pod template: metadata and pod spec. Context: dict "root" (top-level context) "role" ("leader"/"worker"). */}}
{{- define "dsv3.podTemplate" -}}
{{- $ := .root -}}
{{- $role := .role -}}
{{- $v := $.Values -}}
{{- $d := $v.deploy -}}
{{- $ctx := dict "root" $ "role" $role "rdma" (eq (include "dsv3.rdma" $) "true") -}}
{{- $labels := include "dsv3.podLabels" $ | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/component" $role }}
{{- $annotations := dict "checksum/spec" (include "dsv3.podChecksum" $) "kubectl.kubernetes.io/default-container" "dsv3" }}
metadata:
  {{- /* deploy.pod_labels / pod_annotations first, the chart's own keys win (selectors must keep matching) */}}
  labels:
    {{- toYaml (mustMergeOverwrite (deepCopy $d.pod_labels) $labels) | nindent 4 }}
  annotations:
    {{- toYaml (mustMergeOverwrite (deepCopy $d.pod_annotations) $annotations) | nindent 4 }}
spec:
  {{- with $d.scheduler_name }}
  schedulerName: {{ . }}
  {{- end }}
  {{- with $d.image_pull_secrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- if $d.host_network }}
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  {{- end }}
  {{- if $d.host_ipc }}
  hostIPC: true
  {{- end }}
  {{- with $d.priority_class_name }}
  priorityClassName: {{ . }}
  {{- end }}
  enableServiceLinks: false
  {{- /* the launcher reads nothing from the API: no token in the pods */}}
  automountServiceAccountToken: false
  securityContext:
    seccompProfile: {type: RuntimeDefault}
  {{- /* deploy.termination_grace_s: resolved by dsv3ctl from serving.max_seq_len x drain_per_token_ms + 30 s */}}
  terminationGracePeriodSeconds: {{ $d.termination_grace_s | default 60 }}
  {{- $ns := dict -}}
  {{- if $d.gpu_product_label }}{{ $_ := set $ns "nvidia.com/gpu.product" $d.gpu_product_label }}{{ end -}}
  {{- $ns = mustMerge (deepCopy $d.node_selector) $ns }}
  {{- with $ns }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- /* one serving pod per node: only the release's leader and worker pods repel each other (the helm test and
       prepare pods may share a node with them) */}}
  {{- $roles := list (dict "key" "app.kubernetes.io/component" "operator" "In" "values" (list "leader" "worker")) }}
  {{- $anti := dict "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list (dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "dsv3.selectorLabels" $ | fromYaml) "matchExpressions" $roles)))) }}
  affinity:
    {{- toYaml (mustMergeOverwrite $anti (deepCopy $d.affinity)) | nindent 4 }}
  {{- with $d.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: dsv3
      {{- include "dsv3.container" $ctx | nindent 6 }}
  volumes:
    {{- include "dsv3.volumes" $ | nindent 4 }}
{{- end -}}

{{/* The serving container after its name: image, command, env, ports, resources, drain hook, probes, mounts.
     Context: ctx (root, role, rdma). */}}
{{- define "dsv3.container" -}}
{{- $ := .root -}}
{{- $v := $.Values -}}
{{- $d := $v.deploy -}}
{{- $l := $v.launch -}}
image: {{ include "dsv3.image" $ }}
imagePullPolicy: {{ $v.image.pull_policy }}
command: ["dsv3ctl"]
args: ["launch", {{ .role | quote }}]
env:
  {{- include "dsv3.env" . | nindent 2 }}
ports:
  {{- if eq .role "leader" }}
  {{- if include "dsv3.trtllmServe" $ }}
  - {name: openai, containerPort: {{ $d.openai_port }}, protocol: TCP}
  {{- else }}
  - {name: http, containerPort: {{ $l.http_port }}, protocol: TCP}
  - {name: grpc, containerPort: {{ $l.grpc_port }}, protocol: TCP}
  - {name: metrics, containerPort: {{ $l.metrics_port }}, protocol: TCP}
  {{- end }}
  {{- else }}
  - {name: ssh, containerPort: {{ $l.ssh_port }}, protocol: TCP}
  {{- end }}
{{- /* memory and ephemeral storage: request = limit (deploy.memory resolved from the plan by dsv3ctl) */}}
{{- $mem := $d.memory | default "128Gi" }}
resources:
  requests:
    cpu: {{ $d.cpu | quote }}
    memory: {{ $mem | quote }}
    ephemeral-storage: {{ $d.ephemeral_storage | quote }}
    nvidia.com/gpu: {{ $v.parallelism.gpus_per_node | quote }}
    {{- if and .rdma $d.rdma.resource }}
    {{ $d.rdma.resource }}: {{ $d.rdma.count | quote }}
    {{- end }}
  limits:
    memory: {{ $mem | quote }}
    ephemeral-storage: {{ $d.ephemeral_storage | quote }}
    nvidia.com/gpu: {{ $v.parallelism.gpus_per_node | quote }}
    {{- if and .rdma $d.rdma.resource }}
    {{ $d.rdma.resource }}: {{ $d.rdma.count | quote }}
    {{- end }}
{{- if .rdma }}
securityContext:
  capabilities:
    add: ["IPC_LOCK"]
{{- end }}
lifecycle:
  # graceful drain (dsv3ctl launch drain): SIGTERM comes after requests in flight finish, at most the
  # termination grace period - 10 s; a worker waits on the leader's server (one MPI world)
  preStop:
    exec:
      command: ["dsv3ctl", "launch", "drain", "--timeout", {{ max 1 (sub (int ($d.termination_grace_s | default 60)) 10) | quote }}]
{{- include "dsv3.probes" . | nindent 0 }}
volumeMounts:
  {{- include "dsv3.volumeMounts" $ | nindent 2 }}
{{- end -}}

{{/* The container's env list: what the launcher reads, NCCL/UCX settings, deploy.env and Secret refs.
     Context: ctx (root, role, rdma). */}}
{{- define "dsv3.env" -}}
{{- $ := .root -}}
{{- $d := $.Values.deploy -}}
- name: DSV3CTL_SPEC
  value: /etc/dsv3ctl/spec/spec.yaml
- name: DSV3CTL_ROLE
  value: {{ .role }}
- name: DSV3CTL_RELEASE
  value: {{ $.Release.Name }}
- name: DSV3CTL_RUNTIME_DIR
  value: {{ $.Values.launch.runtime_dir }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
{{- with $d.hf_token_secret }}
- name: HF_TOKEN
  valueFrom: {secretKeyRef: {name: {{ . }}, key: HF_TOKEN}}
{{- end }}
{{- with $d.nccl.debug }}
- name: NCCL_DEBUG
  value: {{ . }}
{{- end }}
{{- with $d.nccl.ib_hca }}
- name: NCCL_IB_HCA
  value: {{ . | quote }}
{{- end }}
{{- with $d.nccl.socket_ifname }}
- name: NCCL_SOCKET_IFNAME
  value: {{ . | quote }}
{{- end }}
{{- with $d.nccl.ucx_net_devices }}
- name: UCX_NET_DEVICES
  value: {{ . | quote }}
{{- end }}
{{- if not .rdma }}
- name: NCCL_IB_DISABLE
  value: "1"
{{- end }}
{{- range $k, $val := $d.nccl.extra_env }}
- name: {{ $k }}
  value: {{ $val | quote }}
{{- end }}
{{- range $k, $val := $d.env }}
- name: {{ $k }}
  value: {{ $val | quote }}
{{- end }}
{{- range $d.env_from_secrets }}
- name: {{ .name }}
  valueFrom: {secretKeyRef: {name: {{ .secret }}, key: {{ .key | quote }}, optional: {{ .optional }}}}
{{- end }}
{{- end -}}

{{/* The container's probes: the leader's HTTP startup/readiness/liveness on the serving port (KServe v2 health
     for tritonserver, /health for trtllm-serve); a worker's SSH readiness and its session-lost liveness.
     Context: ctx (root, role; rdma unused). */}}
{{- define "dsv3.probes" -}}
{{- $ := .root -}}
{{- $d := $.Values.deploy -}}
{{- if eq .role "leader" -}}
{{- $serve := eq (include "dsv3.trtllmServe" $) "true" -}}
{{- $path := ternary "/health" "/v2/health/ready" $serve -}}
{{- $live := ternary "/health" "/v2/health/live" $serve -}}
{{- $port := ternary "openai" "http" $serve -}}
startupProbe:
  httpGet: {path: {{ $path }}, port: {{ $port }}}
  periodSeconds: {{ $d.startup_probe_period_s }}
  timeoutSeconds: 5
  failureThreshold: {{ include "dsv3.startupFailureThreshold" $ }}
readinessProbe:
  httpGet: {path: {{ $path }}, port: {{ $port }}}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet: {path: {{ $live }}, port: {{ $port }}}
  periodSeconds: 15
  timeoutSeconds: 10
  failureThreshold: 8
{{- else -}}
readinessProbe:
  tcpSocket: {port: ssh}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
livenessProbe:
  exec:
    command: ["/bin/sh", "-c", "test ! -e \"$DSV3CTL_RUNTIME_DIR/session-lost\""]
  initialDelaySeconds: 30
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 2
{{- end -}}
{{- end -}}

{{/* The container's volumeMounts list: /dev/shm, the models volume (read-only), the SSH Secret, the spec
     ConfigMap, deploy.extra_volume_mounts. Context: the chart's top-level context. */}}
{{- define "dsv3.volumeMounts" -}}
{{- $d := .Values.deploy -}}
- {name: dshm, mountPath: /dev/shm}
- name: models
  mountPath: {{ $d.storage.mount_path }}
  readOnly: true
  {{- with $d.storage.sub_path }}
  subPath: {{ . }}
  {{- end }}
- {name: ssh, mountPath: {{ .Values.launch.ssh_secret_dir }}, readOnly: true}
- {name: spec, mountPath: /etc/dsv3ctl/spec, readOnly: true}
{{- range $d.extra_volume_mounts }}
- name: {{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: {{ .readOnly }}
  {{- with .subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The pod's volumes list, one per mount in dsv3.volumeMounts, then deploy.extra_volumes.
     Context: the chart's top-level context. */}}
{{- define "dsv3.volumes" -}}
{{- $d := .Values.deploy -}}
- name: dshm
  emptyDir: {medium: Memory, sizeLimit: {{ $d.shm_size }}}
- name: models
  {{- if eq $d.storage.kind "hostPath" }}
  hostPath: {path: {{ $d.storage.host_path }}, type: DirectoryOrCreate}
  {{- else }}
  persistentVolumeClaim: {claimName: {{ include "dsv3.claimName" . }}}
  {{- end }}
- name: ssh
  secret: {secretName: {{ include "dsv3.sshSecretName" . }}, defaultMode: 0400}
- name: spec
  configMap: {name: {{ include "dsv3.fullname" . }}-spec}
{{- with $d.extra_volumes }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end -}}
