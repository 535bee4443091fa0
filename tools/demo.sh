#!/usr/bin/env bash
# The main job on the embedded default spec, end to end on the local (simulated) cluster.
# Called by `make demo` after the venv, the cluster tools and the testbed are up; `make demo-down`
# removes it all. Every step prints the dsv3ctl command it runs and how long it took.
#
# What is real: dsv3ctl, the spec and plan, the checkpoint verifier, the Triton model repository
# (protobuf ModelConfig, checked), helm, kube-apiserver/scheduler/controller-manager, etcd, the
# LeaderWorkerSet controller and its webhooks. What is simulated: the GPU nodes (kwok), the checkpoint
# (synthetic, scaled down), the engines (a labelled skeleton), and the pods (never run a container).
set -euo pipefail
cd "$(dirname "$0")/.."

W=${DSV3CTL_DEMO_DIR:-.run/demo}
mkdir -p "$W"
t_all=$SECONDS
step() {  # step "TITLE" CMD...
  local title=$1; shift
  printf '\n\033[1m== %s\033[0m\n$ %s\n' "$title" "$*"
  local t0=$SECONDS
  "$@"
  printf '\033[2m(%s s)\033[0m\n' "$((SECONDS - t0))"
}

eval "$(.venv/bin/python -m dsv3ctl.adapters.testbed env)"

step "1. plan: the layout and memory fit of the embedded default (TP16, 2 x 8 H100-80GB, FP8, engine mode)" \
  dsv3ctl plan

step "2a. a small SYNTHETIC FP8 checkpoint with DeepSeek-V3's real tensor names (random values, scaled down)" \
  dsv3ctl weights synth "$W/checkpoint"
step "2b. verify it: index vs shard headers, every predicted tensor, dtype and shape" \
  dsv3ctl weights verify "$W/checkpoint"

step "3a. a LABELLED engine-directory skeleton (config.json as trtllm-build writes it, empty rank files)" \
  dsv3ctl repo engine-skeleton "$W/engines" --force
TOKENIZER_DIR=$(.venv/bin/python -c 'from dsv3ctl.adapters.tokenizer_files import resolve_tokenizer_dir as r; print(r(None))')
step "3b. the Triton model repository (ensemble, preprocessing, tensorrt_llm, postprocessing, tensorrt_llm_bls)" \
  dsv3ctl repo build --engine-dir "$W/engines" --tokenizer-dir "$TOKENIZER_DIR" --out "$W/model_repo" --force
step "3c. check it against Triton's ModelConfig schema and the engine" \
  dsv3ctl repo check "$W/model_repo" --engine-dir "$W/engines"

step "4a. render: spec -> chart values -> helm template -> one manifest per object" \
  dsv3ctl render --out "$W/manifests"
step "4b. deploy to the local cluster and wait until the LeaderWorkerSet group is Ready" \
  dsv3ctl deploy --create-namespace --wait --timeout 300

step "5. status" dsv3ctl status

# 6. The same chart on the two REAL nodes (kubelet + containerd + runc): containers run, the leader reaches the
# worker over SSH and mpirun starts one rank per pod. The image is docker/Dockerfile's `test` target, whose
# `tritonserver` is a TEST DOUBLE (canned text, no model, no GPU: the pods skip the gpus preflight).
REAL=$W/real
mkdir -p "$REAL/models/engines" "$REAL/models/triton_model_repo/tensorrt_llm"
echo '{"version": "0.17.0", "pretrained_config": {"mapping": {"world_size": 2, "tp_size": 2, "pp_size": 1}}, "build_config": {}}' \
  > "$REAL/models/engines/config.json"
printf 'name: "tensorrt_llm"\nparameters: {\n  key: "gpt_model_path"\n  value: {\n    string_value: "/models/engines"\n  }\n}\n' \
  > "$REAL/models/triton_model_repo/tensorrt_llm/config.pbtxt"
cat > "$REAL/dsv3-real.yaml" <<SPEC
# 2 pods x 1 slot on the real nodes, with the test image (its server is a TEST DOUBLE)
serving: {mode: engine}
parallelism: {nodes: 2, gpus_per_node: 1, tp: 2, moe_ep: 2}
image: {repository: localhost/dsv3ctl, tag: test, pull_policy: Never}
launch: {skip_preflight: [gpus], fabric_check: "off", shm_min_gib: 0.5, engine_dir: /models/engines,
         model_repository: /models/triton_model_repo, worker_wait_timeout_s: 120}
deploy:
  namespace: dsv3-real
  release: real
  cpu: 100m
  memory: 1Gi
  ephemeral_storage: 1Gi
  shm_size: 1Gi
  rdma: {enabled: false}
  tolerations: [{key: dsv3ctl.io/real-node, operator: Equal, value: "true", effect: NoSchedule}]
  node_selector: {dsv3ctl.io/node-kind: real}
  storage: {kind: hostPath, host_path: $(realpath "$REAL/models"), artifacts_dir: ""}
  helm_test_image: ""
  termination_grace_s: 20
SPEC
step "6a. the test image from docker/Dockerfile's test target (buildah; cached by its inputs)" \
  tools/test-image.sh
step "6b. import it into the real nodes' containerd" \
  .venv/bin/python -m dsv3ctl.adapters.testbed load-image "$(tools/test-image.sh 2>/dev/null | tail -1)"
step "6c. deploy the chart onto the two real nodes: SSH, mpirun, probes for real" \
  dsv3ctl deploy --spec "$REAL/dsv3-real.yaml" --create-namespace --wait --timeout 300
IP=$(kubectl -n dsv3-real get svc real-dsv3-api -o jsonpath='{.spec.clusterIP}')
step "6d. one request through the release's Service (ClusterIP $IP, via kube-proxy); the reply is the TEST DOUBLE's" \
  dsv3ctl infer --url "$IP:8001" --prompt "Hello, DeepSeek-V3" --max-tokens 16

cat <<EOF

== done in $((SECONDS - t_all)) s
SIMULATED (steps 1-5): the two 8-GPU nodes are kwok fake nodes (no GPUs, no kubelet): the pods were scheduled
by the real kube-scheduler against nvidia.com/gpu and grouped by the real LeaderWorkerSet controller, then
marked Ready by kwok; the checkpoint is synthetic and the engines are a labelled skeleton.
REAL (step 6): two kubelet + containerd nodes ran the chart's leader and worker containers, sshd, mpirun and
the probes; the server each rank ran is a TEST DOUBLE, so the reply above is canned text, not the model's.
On a real GPU cluster follow docs/operations.md.
Clean up with: make demo-down
EOF
