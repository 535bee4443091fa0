"""Rules of a Kubernetes deployment that need more than one field: RDMA on or off, the storage access modes a
group can use, how the prepare Job gets GPUs on an upgrade, and what a rolling update costs.

:func:`deploy_checks` returns them as planner checks (``dsv3ctl plan`` prints them; ``render_values`` refuses
the failed ones with exit 2). :func:`claim_problem` is the access-mode rule, also applied by ``deploy``'s
preflight to an existing claim's modes read through the API.

Sources:
- Access modes: only a PersistentVolume with ReadWriteMany or ReadOnlyMany may attach to several nodes
  (Kubernetes v1.36.3 pkg/volume/util/util.go:595 ``IsMultiAttachAllowed``); otherwise the attach/detach
  controller reports a Multi-Attach error for the second node (pkg/controller/volume/attachdetach/reconciler/
  reconciler.go:349-353).
- RDMA: the RDMA resource carries traffic between nodes; the ranks of a one-node group share one host, so
  ``auto`` requests it only when the group spans nodes.
- Rollouts: LWS ``RollingUpdateConfiguration`` maxSurge/maxUnavailable (sigs.k8s.io/lws v0.9.0
  api/leaderworkerset/v1/leaderworkerset_types.go:282-311; the webhook refuses both 0,
  pkg/webhooks/leaderworkerset_webhook.go:171).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dsv3ctl.core.spec import Spec

if TYPE_CHECKING:
    from dsv3ctl.core.planner import Check

SHARED_WRITE = "ReadWriteMany"
SHARED_READ = ("ReadWriteMany", "ReadOnlyMany")


def rdma_enabled(spec: Spec) -> tuple[bool, str]:
    """(RDMA on?, why): ``deploy.rdma.enabled`` true/false as written, ``auto`` = on only for multi-node groups."""
    e, nodes = spec.deploy.rdma.enabled, spec.parallelism.nodes
    if e == "auto":
        if nodes > 1:
            r = spec.deploy.rdma
            what = (f"each pod requests {r.count} {r.resource}" if r.resource else
                    "RDMA is on without an extended resource (deploy.rdma.resource='')")
            return True, (f"deploy.rdma.enabled=auto and parallelism.nodes={nodes}: tensor parallelism crosses nodes, "
                          f"so {what}")
        return False, ("deploy.rdma.enabled=auto and parallelism.nodes=1: the group talks over NVLink inside one "
                       "node, so no RDMA resource is requested (NCCL_IB_DISABLE=1)")
    return bool(e), f"deploy.rdma.enabled={str(e).lower()} (set explicitly)"


def pods_on_volume(spec: Spec) -> int:
    """Serving pods that mount the models volume: nodes per group x groups (each on its own node)."""
    return spec.parallelism.nodes * spec.deploy.replicas


def claim_problem(modes: list[str], pods: int, prepare: bool, where: str) -> str | None:
    """Why a claim with access ``modes`` cannot serve ``pods`` pods on different nodes (and take the prepare
    Job's writes when ``prepare``), or None. ``where`` names the field or object in the message."""
    if prepare and pods > 1 and SHARED_WRITE not in modes:
        return (f"{where}={modes}: the prepare Job writes the volume and {pods} pods on {pods} nodes read it, which "
                f"needs {SHARED_WRITE} (ReadWriteOnce/ReadWriteOncePod attach to one node: Multi-Attach error); "
                f"use access_modes [ReadWriteMany] on a StorageClass that offers it (NFS, CephFS, Filestore, "
                f"EFS, Azure Files), or kind=hostPath (then the prepare Job runs on every GPU node)")
    if prepare and not ({SHARED_WRITE, "ReadWriteOnce", "ReadWriteOncePod"} & set(modes)):
        return (f"{where}={modes}: the prepare Job cannot write a ReadOnlyMany claim; add ReadWriteMany, or fill the "
                f"volume elsewhere and set deploy.prepare.enabled=false")
    if pods > 1 and not (set(SHARED_READ) & set(modes)):
        return (f"{where}={modes}: {pods} serving pods on {pods} nodes cannot share a ReadWriteOnce/ReadWriteOncePod "
                f"volume (it attaches to one node: Multi-Attach error); use ReadOnlyMany or ReadWriteMany, or "
                f"kind=hostPath")
    return None


def pod_memory(spec: Spec) -> str:
    """``deploy.memory``, or (empty) the weight bytes per GPU (planner) x gpus_per_node + shm_size +
    memory_headroom, rounded up to whole GiB; the chart sets request = limit (Guaranteed memory, not evicted
    first as Burstable)."""
    import math

    from dsv3ctl.core.model import DeepSeekV3Config
    from dsv3ctl.core.planner import _weights_per_gpu

    d = spec.deploy
    if d.memory:
        return d.memory
    per_gpu, _ = _weights_per_gpu(spec, DeepSeekV3Config.default())
    total = per_gpu * spec.parallelism.gpus_per_node + _bytes(d.shm_size) + _bytes(d.memory_headroom)
    return f"{math.ceil(total / 2**30)}Gi"


def _bytes(q: str) -> float:
    from dsv3ctl.render.values import quantity_bytes  # the one quantity parser (pure)

    return quantity_bytes(q)


def termination_grace_s(spec: Spec) -> int:
    """``deploy.termination_grace_s``, or ``ceil(serving.max_seq_len x drain_per_token_ms / 1000) + 30``: time for
    the longest request in flight to finish after the pod is told to stop."""
    import math

    d = spec.deploy
    if d.termination_grace_s is not None:
        return d.termination_grace_s
    return math.ceil(spec.serving.max_seq_len * d.drain_per_token_ms / 1000) + 30


def _fabric_line_rate_warning(spec: Spec) -> str | None:
    """eks: the derived fabric threshold (0.5 x deploy.rdma.count x 400 Gb/s NDR per resource, dsv3ctl.core.fabric)
    does not describe EFA devices (AWS's p5.48xlarge sample requests 32 of them, platforms.json notes), so a
    multi-node group with the fabric check on and no explicit threshold gets a warning naming the key to set."""
    from dsv3ctl.core.fabric import NIC_GBPS

    lc, nodes = spec.launch, spec.parallelism.nodes
    mode = lc.fabric_check if lc.fabric_check != "auto" else ("enforce" if nodes > 1 else "off")
    if spec.deploy.platform != "eks" or mode == "off" or lc.fabric_min_busbw_gbps > 0 or nodes < 2:
        return None
    if not rdma_enabled(spec)[0]:
        return None
    return (f"deploy.platform=eks: the fabric check's derived threshold assumes {NIC_GBPS:g} Gb/s NDR InfiniBand per "
            f"{spec.deploy.rdma.resource} (x deploy.rdma.count={spec.deploy.rdma.count}), which an EFA device is not; "
            f"set launch.fabric_min_busbw_gbps to the bus bandwidth your instance type reaches (nccl-tests "
            f"all_reduce_perf), or launch.fabric_check=warn")


def deploy_checks(spec: Spec) -> list[Check]:
    """Checks named ``platform``, ``rdma``, ``storage``, ``prepare_gpus``, ``resources`` and ``rollout`` (only
    ``storage`` can fail), on the spec with ``deploy.platform``'s preset applied (as the chart values are rendered);
    ``platform`` lists each key the preset set and its source, plus a warning where the preset's RDMA resource is
    not what the derived fabric threshold assumes."""
    from dsv3ctl.core.planner import Check
    from dsv3ctl.core.platforms import apply_platform, platform_message, platform_notes

    out: list[Check] = [Check("platform", True, platform_message(spec), "info")]
    notes = platform_notes(spec.deploy.platform)
    if notes:
        out.append(Check("platform_notes", True, f"deploy.platform={spec.deploy.platform} leaves out: " + " ".join(notes),
                         "info"))
    spec, _ = apply_platform(spec)
    d, par = spec.deploy, spec.parallelism
    warn = _fabric_line_rate_warning(spec)
    if warn:
        out.append(Check("platform_fabric", True, warn, "warning"))
    on, why = rdma_enabled(spec)
    out.append(Check("rdma", True, ("on: " if on else "off: ") + why, "info"))
    st, pods = d.storage, pods_on_volume(spec)
    if st.kind == "newClaim":
        bad = claim_problem(list(st.access_modes), pods, d.prepare.enabled, "deploy.storage.access_modes")
        out.append(Check("storage", bad is None, bad or f"new claim {st.access_modes} serves {pods} pod(s)"
                                                       + (" and the prepare Job" if d.prepare.enabled else "")))
    elif st.kind == "existingClaim":
        out.append(Check("storage", True, f"existing claim {st.claim_name or '(unnamed)'}: deploy checks its access "
                                          f"modes ({pods} pod(s) need "
                                          + ("ReadWriteMany" if d.prepare.enabled and pods > 1 else
                                             "ReadOnlyMany or ReadWriteMany" if pods > 1 else "any mode") + ")",
                         "info"))
    elif pods > 1:
        msg = (f"hostPath {st.host_path} on each of {pods} nodes: "
               + ("the prepare Job runs once on every GPU node (per-node prepare)" if d.prepare.enabled else
                  "every node must hold the same files (deploy.prepare.enabled=true fills each node)"))
        out.append(Check("storage", True, msg, "info" if d.prepare.enabled else "warning"))
    else:
        out.append(Check("storage", True, f"hostPath {st.host_path} on the group's one node", "info"))
    if d.prepare.enabled:
        if spec.serving.mode == "engine":
            msg = (f"the prepare Job requests {par.gpus_per_node} nvidia.com/gpu (trtllm-build runs on GPUs); on an "
                   "upgrade it never takes the running group's GPUs: it needs a node with that many free GPUs (a "
                   "second set of nodes), else deploy refuses, or with --stop-for-prepare stops the group first "
                   "(no serving until the new group is Ready)")
        else:
            msg = "the prepare Job requests no GPUs (llmapi mode: download and repository only)"
        out.append(Check("prepare_gpus", True, msg, "info"))
    try:
        mem = pod_memory(spec)
    except (ValueError, ZeroDivisionError, KeyError):  # a layout the planner refuses elsewhere
        mem = d.memory or "?"
    out.append(Check("resources", True, f"per pod: memory request = limit {mem}"
                                        + ("" if d.memory else " (weights per node + shm_size + memory_headroom)")
                                        + f", ephemeral-storage {d.ephemeral_storage}, terminationGracePeriodSeconds "
                                        f"{termination_grace_s(spec)}"
                                        + ("" if d.termination_grace_s else f" (max_seq_len {spec.serving.max_seq_len}"
                                           f" x {d.drain_per_token_ms:g} ms + 30 s)"), "info"))
    out += pod_config_checks(spec)
    psa_level, psa_why = pod_security(spec)
    out.append(Check("pod_security", True, f"the pods pass Pod Security level {psa_level}"
                                           + (f" (not baseline: {'; '.join(psa_why)})" if psa_why else "")
                                           + f": deploy --create-namespace labels a new namespace {PSA_ENFORCE_LABEL}="
                                           f"{psa_level}; an existing namespace enforcing a stricter level is refused",
                     "info"))
    surge = d.effective_max_surge
    cost = surge * par.nodes * par.gpus_per_node
    out.append(Check("rollout", True, f"rolling update maxSurge={surge} maxUnavailable={d.max_unavailable}: an upgrade "
                                      + (f"needs {cost} extra GPUs ({surge} group(s) x {par.nodes} x "
                                         f"{par.gpus_per_node})" if surge else
                                         f"takes down up to {d.max_unavailable} group(s) at a time, no extra GPUs"),
                     "info"))
    return out


def pod_config_checks(spec: Spec) -> list[Check]:
    """The rules the chart's pods need beyond the layout, as failed planner checks (none when all hold), so
    ``dsv3ctl plan`` refuses what ``render`` and the chart's ``dsv3.validate`` guard refuse (exit 2 before
    helm runs). Names: ``storage_claim_name``, ``shm_size``, ``launch_paths``, ``frontend_mode``, ``ports``.

    - ``shm_size``: the launcher's preflight refuses a /dev/shm smaller than ``launch.shm_min_gib``
      (:mod:`dsv3ctl.launch.preflight`), and the chart's dshm emptyDir has ``sizeLimit: deploy.shm_size``.
    - ``launch_paths``: the pods see the storage volume only at ``deploy.storage.mount_path``.
    - ``frontend_mode``: trtllm-serve serves the PyTorch backend only (llmapi mode).
    - ``ports``: every pod's sshd (``launch.ssh_port``) and the serving ports share the pod's network
      namespace, so they must all differ.
    """
    from dsv3ctl.core.planner import Check

    d, launch, out = spec.deploy, spec.launch, []
    st = d.storage
    if st.kind == "existingClaim" and not st.claim_name:
        out.append(Check("storage_claim_name", False, "deploy.storage.kind=existingClaim needs "
                                                      "deploy.storage.claim_name (the PVC's name)"))
    if _bytes(d.shm_size) < launch.shm_min_gib * 2**30:
        need = max(1, math.ceil(launch.shm_min_gib))
        out.append(Check("shm_size", False, f"deploy.shm_size={d.shm_size} is below launch.shm_min_gib="
                                            f"{launch.shm_min_gib:g} GiB, so the launcher's preflight would refuse "
                                            f"to start; this rule passes with deploy.shm_size={need}Gi or more"))
    mount = st.mount_path.rstrip("/") + "/"
    for name in ("model_repository", "model_dir"):
        path = getattr(launch, name)
        if path and not (path + "/").startswith(mount):
            out.append(Check("launch_paths", False, f"launch.{name}={path!r} is not under deploy.storage.mount_path="
                                                    f"{st.mount_path!r}, so the pods would not see it"))
    if spec.serving.frontend == "trtllm-serve" and spec.serving.mode != "llmapi":
        out.append(Check("frontend_mode", False, "serving.frontend=trtllm-serve needs serving.mode=llmapi "
                                                 "(trtllm-serve runs the PyTorch backend, not TensorRT engines)"))
    ports = {"launch.ssh_port": launch.ssh_port, "launch.http_port": launch.http_port,
             "launch.grpc_port": launch.grpc_port, "launch.metrics_port": launch.metrics_port,
             "deploy.openai_port": d.openai_port}
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port in seen:
            out.append(Check("ports", False, f"{key}={port} is also {seen[port]}: the pod's sshd and serving ports "
                                             "share one network namespace and must all differ"))
        else:
            seen[port] = key
    return out


#: Pod Security Standards levels, least strict first (k8s.io/pod-security-admission v0.36.3 api/constants.go:22-28)
PSA_LEVELS = ("privileged", "baseline", "restricted")
#: the namespace label the PodSecurity admission plugin enforces (api/constants.go:40)
PSA_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
#: capabilities baseline lets a container add (policy/check_capabilities_baseline.go:62-76)
PSA_BASELINE_CAPS = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                               "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})


def pod_security_level(*, rdma: bool, storage_kind: str, host_network: bool, host_ipc: bool,
                       extra_volumes: list[dict[str, object]]) -> tuple[str, list[str]]:
    """The least strict Pod Security Standards level the release's pods pass, and why: ``("privileged",
    [reasons])`` or ``("baseline", [])``. Never restricted: sshd and the MPI ranks run as root.

    Rules of baseline (k8s.io/pod-security-admission v0.36.3, policy/): added capabilities only from
    :data:`PSA_BASELINE_CAPS` (check_capabilities_baseline.go:62-88; the chart adds IPC_LOCK when RDMA is
    on), no hostPath volumes (check_hostPathVolumes.go:48-70), no hostNetwork / hostIPC
    (check_hostNamespaces.go:48-69).
    """
    why = []
    if rdma and "IPC_LOCK" not in PSA_BASELINE_CAPS:
        why.append("the IPC_LOCK capability (RDMA on; baseline allows only the default capabilities)")
    if storage_kind == "hostPath":
        why.append("a hostPath volume (deploy.storage.kind=hostPath)")
    if any("hostPath" in v for v in extra_volumes):
        why.append("a hostPath volume in deploy.extra_volumes")
    if host_network:
        why.append("hostNetwork (deploy.host_network)")
    if host_ipc:
        why.append("hostIPC (deploy.host_ipc)")
    return ("privileged" if why else "baseline"), why


def pod_security(spec: Spec) -> tuple[str, list[str]]:
    """:func:`pod_security_level` of the pods ``spec`` renders."""
    d = spec.deploy
    return pod_security_level(rdma=rdma_enabled(spec)[0], storage_kind=d.storage.kind, host_network=d.host_network,
                              host_ipc=d.host_ipc, extra_volumes=d.extra_volumes)


def stricter(a: str, b: str) -> bool:
    """Is Pod Security level ``a`` stricter than ``b``? (unknown levels count as restricted)"""
    rank = {lv: i for i, lv in enumerate(PSA_LEVELS)}
    return rank.get(a, len(PSA_LEVELS)) > rank.get(b, len(PSA_LEVELS))
