"""The sbatch script for the Slurm path (pure): one job of ``parallelism.nodes`` nodes, one task per GPU,
``srun --mpi=pmix`` with the container image (pyxis/enroot ``--container-image``/``--container-mounts``), and
every task running ``dsv3ctl launch rank`` (which reads ``SLURM_PROCID`` and execs the server of that rank:
tritonserver leader mode in engine mode, ``trtllm-llmapi-launch`` in llmapi mode).

Sources: tensorrtllm_backend README @ v0.19.0 ("srun --mpi=pmix ... tritonserver ...
--backend-config=python,shm-region-prefix-name=prefix${SLURM_PROCID}_") and docs/llmapi.md ("srun -N 2
--ntasks-per-node=8 --mpi=pmix --container-image=<img> trtllm-llmapi-launch tritonserver ..."); TensorRT-LLM
DeepSeek-V3 README (``--gres=gpu:8``).
"""

from __future__ import annotations

import shlex

from dsv3ctl.render.image import image_ref
from dsv3ctl.render.launch import rank_config_from_spec


def enroot_uri(ref: str) -> str:
    """An image reference as pyxis' ``--container-image`` wants it: ``[REGISTRY#]IMAGE[:TAG]``.

    pyxis (NVIDIA/pyxis ``pyxis_slurmstepd.c`` @ a35027cf, ``enroot_container_create``) imports any value not
    starting with ``.`` or ``/`` as ``enroot import docker://<value>``; enroot (NVIDIA/enroot
    ``src/docker.sh`` @ a9e277e4, ``docker::import``) parses ``docker://[USER@][REGISTRY#]IMAGE[:TAG]`` with
    IMAGE ``[[:lower:][:digit:]/._-]+`` and, without ``REGISTRY#``, pulls from ``registry-1.docker.io``
    (``docker::_download``). So ``ghcr.io/dsv3ctl/dsv3ctl:0.1.0`` becomes ``ghcr.io#dsv3ctl/dsv3ctl:0.1.0``.
    A first path component is a registry when it has a ``.`` or a ``:``, is ``localhost`` or has an
    uppercase letter (the Docker rule: distribution/reference ``normalize.go`` @ aeed5e66,
    ``splitDockerDomain``). SpecError for a digest reference
    (``@sha256:...``), which that enroot grammar does not accept."""
    from dsv3ctl.errors import SpecError

    if "@" in ref:
        raise SpecError(f"image {ref!r}: enroot's docker:// import takes REGISTRY#IMAGE[:TAG], not a digest; "
                        "use a tag (image.tag)")
    if "#" in ref or ref.startswith((".", "/")):
        return ref  # already enroot's form, or a squashfs file
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return f"{first}#{rest}"
    return ref


def check_layout(spec) -> None:  # type: ignore[no-untyped-def]
    """SpecError (exit 2) listing every failed layout check of the planner (:func:`require_layout`)."""
    from dsv3ctl.core.planner import require_layout

    require_layout(spec, "the sbatch script cannot launch")


def render_sbatch(spec, image: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """The sbatch script text. ``image`` defaults to the spec's image for its serving mode; it is written in
    enroot's ``REGISTRY#IMAGE[:TAG]`` form (:func:`enroot_uri`). SpecError for a layout the planner rejects
    (:func:`check_layout`)."""
    check_layout(spec)
    p, sl = spec.parallelism, spec.slurm
    img = enroot_uri(image or image_ref(spec, spec.serving.mode))
    cfg = rank_config_from_spec(spec)
    rank_cmd = ["dsv3ctl", "launch", "rank", *cfg.to_args()]
    directives = [
        f"#SBATCH --job-name={sl.job_name}",
        f"#SBATCH --nodes={p.nodes}",
        f"#SBATCH --ntasks-per-node={p.gpus_per_node}",
        f"#SBATCH --gres=gpu:{p.gpus_per_node}",
        "#SBATCH --exclusive",
        f"#SBATCH --time={sl.time_limit}",
        f"#SBATCH --output={sl.job_name}-%j.out",
    ]
    if sl.partition:
        directives.append(f"#SBATCH --partition={sl.partition}")
    if sl.account:
        directives.append(f"#SBATCH --account={sl.account}")
    mounts = ",".join(sl.container_mounts)
    lines = [
        "#!/bin/bash",
        f"# DeepSeek-V3 ({spec.serving.mode} mode) on {p.nodes} nodes x {p.gpus_per_node} GPUs = "
        f"{p.world_size} ranks (tp={p.tp}, pp={p.pp}).",
        "# Rendered by `dsv3ctl slurm render`; every task runs `dsv3ctl launch rank`, which reads SLURM_PROCID",
        "# and execs the server for that rank (rank 0 serves HTTP/gRPC/metrics).",
        *directives,
        "set -euo pipefail",
        "",
        f"IMAGE={shlex.quote(img)}",
        f"MOUNTS={shlex.quote(mounts)}",
        "",
        'echo "job ${SLURM_JOB_ID:-?}: leader node $(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" '
        '| head -n 1), HTTP port ' + str(cfg.http_port) + '"',
        "",
        *fabric_step(spec),
        "srun --mpi=pmix \\",
        f"  --nodes={p.nodes} --ntasks={p.world_size} --ntasks-per-node={p.gpus_per_node} \\",
        '  --container-image="${IMAGE}" \\',
        '  --container-mounts="${MOUNTS}" \\',
        "  --no-container-mount-home \\",
        "  " + shlex.join(rank_cmd),
        "",
    ]
    return "\n".join(lines)


def fabric_step(spec) -> list[str]:  # type: ignore[no-untyped-def]
    """The fabric check as two srun steps before the server (none when ``launch.fabric_check`` resolves to off): every
    task runs the worker (dsv3ctl.adapters.fabric_worker, with the image's python3, which holds torch) with
    ``NCCL_DEBUG=INFO``; one task judges the captured output with ``dsv3ctl fabric-check --from-log -``. Enforce:
    a failed verdict ends the job (``set -e``); warn: it is logged only."""
    from dsv3ctl.core import fabric as F

    p, lc, rdma = spec.parallelism, spec.launch, spec.deploy.rdma
    mode = lc.fabric_check if lc.fabric_check != "auto" else ("enforce" if p.nodes > 1 else "off")
    if mode == "off":
        return []
    thr, _src = F.default_min_busbw_gbps(nodes=p.nodes, rdma=rdma.enabled, rdma_count=rdma.count,
                                         explicit=lc.fabric_min_busbw_gbps)
    judge = ["dsv3ctl", "fabric-check", "--from-log", "-", "--world", str(p.world_size), "--mode", mode,
             "--rdma" if rdma.enabled else "--no-rdma", "--min-busbw-gbps", f"{thr:g}", "--runtime-dir", "/tmp"]
    return [
        f"# Fabric check (launch.fabric_check={lc.fabric_check} -> {mode}): one all-reduce over every rank before the",
        "# server loads; NCCL's INFO lines tell the transport per channel (see docs/operations.md).",
        'MASTER="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)"',
        'FABRIC_LOG="${SLURM_SUBMIT_DIR:-.}/' + spec.slurm.job_name + '-fabric-${SLURM_JOB_ID:-0}.log"',
        "# shellcheck disable=SC2016  # the worker path is expanded inside the container, not here",
        "srun --mpi=pmix \\",
        f"  --nodes={p.nodes} --ntasks={p.world_size} --ntasks-per-node={p.gpus_per_node} \\",
        '  --container-image="${IMAGE}" \\',
        '  --container-mounts="${MOUNTS}" \\',
        "  --no-container-mount-home \\",
        "  bash -c 'exec python3 \"$(dsv3ctl fabric-check --worker-path)\" \"$@\"' fabric-worker \\",
        f'  --master-addr "${{MASTER}}" --timeout-s {lc.fabric_timeout_s} > "${{FABRIC_LOG}}" 2>&1 || true',
        "srun --nodes=1 --ntasks=1 \\",
        '  --container-image="${IMAGE}" \\',
        "  --no-container-mount-home \\",
        "  " + shlex.join(judge) + ' < "${FABRIC_LOG}"' + (" || true" if mode == "warn" else ""),
        "",
    ]
