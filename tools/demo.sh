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

cat <<EOF

== done in $((SECONDS - t_all)) s
SIMULATED: the two 8-GPU nodes are kwok fake nodes (no GPUs, no kubelet): the pods were scheduled by the
real kube-scheduler against nvidia.com/gpu and grouped by the real LeaderWorkerSet controller, then marked
Ready by kwok. No container ran and no model is served; the checkpoint is synthetic and the engines are a
labelled skeleton. On a real GPU cluster follow docs/operations.md.
Clean up with: make demo-down
EOF
