"""The prepare Job on the cluster: storage rules checked first, the claim created before the Job, GPUs never
taken from a running group of the same release, the Job watched with its own deadline, and clean-up.

Objects are rendered by :mod:`dsv3ctl.render.prepare_job`; this module creates, watches and deletes them
through :class:`dsv3ctl.adapters.kube.Kube`. A succeeded Job named by the spec's fingerprint is the record that
the fingerprint's artifact directory is complete: a rerun, an upgrade back to an earlier spec or a rollback finds
it and creates nothing. Errors: :class:`SpecError` (exit 2) for a storage rule or GPU conflict found before
anything is created; :class:`RuntimeFailure` (exit 1) for a Job that fails or outlives its deadline, with the
pod's state and last log lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dsv3ctl.adapters.kube import (
    GPU,
    LWS_GROUP,
    LWS_PLURAL,
    LWS_VERSION,
    Kube,
    _name,
    _qty,
    fullname,
    gpu_holders,
    names,
)
from dsv3ctl.core.deploy_rules import claim_problem
from dsv3ctl.core.names import Names
from dsv3ctl.errors import RuntimeFailure, SpecError
from dsv3ctl.render import prepare_job as R

Log = Callable[[str], None]
POLL_S = 2.0
LOG_TAIL = 20


@dataclass
class PrepareResult:
    job: str
    fingerprint: str
    artifact_dir: str
    state: str  # "succeeded" | "skipped" | "created" (not waited)
    completions: int = 1
    log: list[str] = field(default_factory=list)


def _api(kube: Kube) -> Any:
    return kube.client.BatchV1Api(kube.api)


def _body(obj: dict[str, Any]) -> Any:
    """A manifest dict as a request body (the client serializes dicts as they are; its stubs want model classes)."""
    return obj


def _exists(fn: Callable[[], Any]) -> Any:
    """``fn()``, or None when the API server answers 404 (the object is gone; for a delete: gone already, e.g.
    removed by the garbage collector between our list and our delete)."""
    from kubernetes.client.exceptions import ApiException

    try:
        return fn()
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def gpu_nodes(kube: Kube, values: dict[str, Any]) -> list[str]:
    """Schedulable nodes with the GPU product label / node selector, gpus_per_node allocatable GPUs and no
    NoSchedule/NoExecute taint the pods' tolerations (deploy.tolerations) do not tolerate."""
    from dsv3ctl.adapters.kube import _tolerates

    d, gpus = values["deploy"], int(values["parallelism"]["gpus_per_node"])
    sel = dict(d["node_selector"])
    if d["gpu_product_label"]:
        sel["nvidia.com/gpu.product"] = d["gpu_product_label"]
    out = []
    for n in kube.core.list_node().items:
        labels = (n.metadata.labels if n.metadata else None) or {}
        alloc = (n.status.allocatable if n.status else None) or {}
        if n.spec and n.spec.unschedulable:
            continue
        taints = [t for t in ((n.spec.taints if n.spec else None) or []) if t.effect in ("NoSchedule", "NoExecute")]
        if any(not _tolerates(d["tolerations"], t) for t in taints):
            continue
        if all(labels.get(k) == v for k, v in sel.items()) and _qty(alloc.get(GPU)) >= gpus:
            out.append(_name(n))
    return sorted(out)


def check_storage(kube: Kube, values: dict[str, Any], namespace: str) -> None:
    """The access-mode rule for an existing claim (its modes read through the API); SpecError when it fails."""
    d = values["deploy"]
    st = d["storage"]
    if st["kind"] != "existingClaim":
        return  # newClaim is checked on the spec (render_values), hostPath has no modes
    pvc = _exists(lambda: kube.core.read_namespaced_persistent_volume_claim(st["claim_name"], namespace))
    if pvc is None:
        return  # the deploy preflight reports a missing claim
    modes = list((pvc.status.access_modes if pvc.status else None) or pvc.spec.access_modes or [])
    pods = int(values["parallelism"]["nodes"]) * int(d["replicas"])
    bad = claim_problem(modes, pods, bool(d["prepare"]["enabled"]), f"PVC {namespace}/{st['claim_name']} accessModes")
    if bad:
        raise SpecError(bad)


def ensure_claim(kube: Kube, values: dict[str, Any], namespace: str, log: Log) -> None:
    """Create the chart's new claim now (Helm adopts it later; see :func:`dsv3ctl.render.prepare_job.claim_object`)."""
    if values["deploy"]["storage"]["kind"] != "newClaim":
        return
    obj = R.claim_object(values, namespace)
    name = obj["metadata"]["name"]
    if _exists(lambda: kube.core.read_namespaced_persistent_volume_claim(name, namespace)) is None:
        kube.core.create_namespaced_persistent_volume_claim(namespace, _body(obj))
        log(f"created PVC {namespace}/{name} (kept on undeploy; the release adopts it)")


def namespace_labels(values: dict[str, Any]) -> dict[str, str]:
    """Labels of a namespace dsv3ctl creates: the Pod Security level the release's pods need."""
    from dsv3ctl.adapters.kube import values_pod_security
    from dsv3ctl.core.deploy_rules import PSA_ENFORCE_LABEL

    return {PSA_ENFORCE_LABEL: values_pod_security(values)[0]}


def ensure_namespace(kube: Kube, namespace: str, create: bool, log: Log,
                     labels: dict[str, str] | None = None) -> None:
    """Create ``namespace`` (with ``labels``) when it is missing and ``create``; SpecError when missing and not."""
    if _exists(lambda: kube.core.read_namespace(namespace)) is not None:
        return
    if not create:
        raise SpecError(f"namespace {namespace} does not exist", hint="pass --create-namespace")
    kube.core.create_namespace(_body({"metadata": {"name": namespace, "labels": dict(labels or {})}}))
    log(f"created namespace {namespace}" + "".join(f" ({k}={v})" for k, v in (labels or {}).items()))


def _group_replicas(kube: Kube, namespace: str, release: str | Names) -> int:
    o = _exists(lambda: kube.custom.get_namespaced_custom_object(LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL,
                                                                 fullname(release)))
    return int((o or {}).get("spec", {}).get("replicas") or 0)


def _free_gpu_nodes(kube: Kube, nodes: list[str], gpus: int) -> list[str]:
    """Nodes of ``nodes`` with ``gpus`` GPUs not requested by any running pod (this release's included)."""
    holders, _ = gpu_holders(kube, set(nodes))
    alloc = {_name(n): _qty(((n.status.allocatable if n.status else None) or {}).get(GPU))
             for n in kube.core.list_node().items}
    return [n for n in nodes if alloc.get(n, 0) - sum(h.gpus for h in holders.get(n, [])) >= gpus]


def stop_group(kube: Kube, namespace: str, release: str | Names, log: Log, timeout_s: float = 600) -> None:
    """Delete the release's LeaderWorkerSet (its groups with it) and wait until its pods are gone; the
    ``helm upgrade`` that follows creates it again from the new values. Deleted rather than scaled to 0:
    Helm creates a release object that is missing on upgrade (helm.sh/helm/v4 v4.2.4 pkg/kube/client.go:584-594,
    v3.21.4 client.go:403), while a ``replicas`` changed by another field manager makes Helm 4's server-side
    apply fail with a conflict on ``.spec.replicas``."""
    name = fullname(release)
    kube.custom.delete_namespaced_custom_object(LWS_GROUP, LWS_VERSION, namespace, LWS_PLURAL, name,
                                                propagation_policy="Background")
    log(f"deleted LeaderWorkerSet {name} (--stop-for-prepare) so the prepare Job can use its GPUs; the upgrade "
        "creates it again")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not kube.pods(namespace, release):
            return
        time.sleep(POLL_S)
    raise RuntimeFailure(f"the pods of {name} were still there {timeout_s:.0f} s after deleting it",
                         hint=f"`dsv3ctl status -n {namespace} --release {names(release).release}`")


def _job_state(job: Any) -> tuple[str, str]:
    """("succeeded" | "failed" | "running", reason) from the Job's conditions (batch/v1 JobCondition)."""
    for c in (job.status.conditions if job.status else None) or []:
        if c.status == "True" and c.type == "Complete":
            return "succeeded", c.reason or ""
        if c.status == "True" and c.type == "Failed":
            return "failed", f"{c.reason}: {c.message}" if c.message else (c.reason or "")
    return "running", ""


def _pods(kube: Kube, namespace: str, job: str) -> list[Any]:
    return kube.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


def _pod_line(p: Any) -> str:
    st = p.status
    why = ""
    for c in (st.conditions if st else None) or []:
        if c.type == "PodScheduled" and c.status == "False":
            why = f" {c.reason}: {c.message}"
    for cs in (st.container_statuses if st else None) or []:
        if cs.state and cs.state.waiting:
            why = f" {cs.state.waiting.reason}"
        elif cs.state and cs.state.terminated:
            why = f" exit {cs.state.terminated.exit_code} ({cs.state.terminated.reason})"
    return f"{_name(p)} {st.phase if st else '?'} node={(p.spec.node_name if p.spec else None) or '-'}{why}"


def _log_tail(kube: Kube, namespace: str, pod: str) -> list[str]:
    """The pod's last log lines; [] when the kubelet cannot serve them (kwok nodes have none)."""
    try:
        text = kube.core.read_namespaced_pod_log(pod, namespace, tail_lines=LOG_TAIL)  # the one container
    except Exception:  # noqa: BLE001 - no log is not a failure of the Job
        return []
    if not isinstance(text, str):  # the client returns None for an empty body (a pod that never started)
        return []
    return [x for x in text.splitlines() if x.strip()]


def run_prepare(kube: Kube, values: dict[str, Any], namespace: str, fp: str, artifact_dir: str, *,
                stop_for_prepare: bool = False, wait: bool = True, log: Log = lambda _m: None,
                timeout_s: float | None = None) -> PrepareResult:
    """Create the prepare Job of fingerprint ``fp`` (unless it already succeeded) and watch it.

    Before creating anything: the storage rule of an existing claim; in engine mode (the Job requests GPUs), when
    the release's group is running and no node has the Job's GPUs free, SpecError unless ``stop_for_prepare``
    (then the group is deleted first; the upgrade creates it again). Per-node hostPath (more than one serving pod) runs one pod on each GPU
    node. Waits up to ``timeout_s`` (default ``deploy.prepare.timeout_s`` + 60 s), printing pod state changes and
    new log lines through ``log``.
    """
    d = values["deploy"]
    rel = d["release"]
    name = R.job_name(Names.of(d), fp)
    batch = _api(kube)
    check_storage(kube, values, namespace)
    old = _exists(lambda: batch.read_namespaced_job(name, namespace))
    if old is not None:
        state, why = _job_state(old)
        if state == "succeeded":
            log(f"prepare Job {name} already succeeded: artifacts {artifact_dir or fp} are complete")
            return PrepareResult(name, fp, artifact_dir, "skipped")
        if state == "failed":
            log(f"prepare Job {name} failed before ({why}); deleting it to run again")
            delete_prepare(kube, namespace, rel, fingerprint=fp)
            _wait_gone(kube, namespace, name)
            old = None
    completions = 1
    pods = int(values["parallelism"]["nodes"]) * int(d["replicas"])
    nodes = gpu_nodes(kube, values)
    if d["storage"]["kind"] == "hostPath" and pods > 1:
        completions = len(nodes)
        if completions < pods:
            raise SpecError(f"per-node prepare (hostPath {d['storage']['host_path']}) needs one GPU node per serving "
                            f"pod: {len(nodes)} node(s) match, {pods} pod(s) planned",
                            hint="add GPU nodes or use a shared claim (deploy.storage.kind=newClaim, ReadWriteMany)")
    if old is None and values["serving"]["mode"] == "engine":
        gpus = int(values["parallelism"]["gpus_per_node"])
        free = _free_gpu_nodes(kube, nodes, gpus)
        running = _group_replicas(kube, namespace, Names.of(d))
        if len(free) < completions and running:
            if not stop_for_prepare:
                raise SpecError(
                    f"the prepare Job needs {gpus} free {GPU} on {completions} node(s) for trtllm-build, but only "
                    f"{len(free)} node(s) have them while {running} group(s) of release {rel} hold the rest; it never "
                    "takes a running group's GPUs",
                    hint="add a node with free GPUs (a second set of nodes), or pass --stop-for-prepare to stop the "
                         "group first (no serving until the new group is Ready)")
            stop_group(kube, namespace, Names.of(d), log)
    if old is None:
        for obj in R.prepare_objects(values, fp, artifact_dir, namespace=namespace, completions=completions):
            if obj["kind"] == "ConfigMap":
                if _exists(lambda: kube.core.read_namespaced_config_map(name, namespace)) is not None:
                    kube.core.delete_namespaced_config_map(name, namespace)
                kube.core.create_namespaced_config_map(namespace, _body(obj))
            else:
                batch.create_namespaced_job(namespace, _body(obj))
        log(f"created prepare Job {name} ({completions} pod(s); artifacts -> {artifact_dir or 'fixed launch.* paths'})")
    if not wait:
        return PrepareResult(name, fp, artifact_dir, "created", completions)
    return _watch(kube, namespace, name, fp, artifact_dir, completions, log,
                  timeout_s if timeout_s is not None else float(d["prepare"]["timeout_s"]) + 60)


def _watch(kube: Kube, namespace: str, name: str, fp: str, artifact_dir: str, completions: int, log: Log,
           timeout_s: float) -> PrepareResult:
    batch = _api(kube)
    seen: dict[str, str] = {}
    printed: dict[str, list[str]] = {}
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    last: list[str] = []
    while True:
        job = batch.read_namespaced_job(name, namespace)
        state, why = _job_state(job)
        for p in _pods(kube, namespace, name):
            line = _pod_line(p)
            if seen.get(_name(p)) != line:
                seen[_name(p)] = line
                log(f"  prepare pod {line}")
            tail = _log_tail(kube, namespace, _name(p))
            new = [x for x in tail if x not in printed.get(_name(p), [])]
            for x in new:
                log(f"  | {x}")
            if tail:
                printed[_name(p)] = tail
                last = tail
        if state == "succeeded":
            log(f"prepare Job {name} succeeded in {time.monotonic() - t0:.0f} s")
            return PrepareResult(name, fp, artifact_dir, "succeeded", completions, last)
        if state == "failed":
            raise RuntimeFailure(f"prepare Job {namespace}/{name} failed: {why}\n  pods: "
                                 + "; ".join(seen.values()) + ("\n  last log lines:\n    " + "\n    ".join(last)
                                                               if last else ""),
                                 hint=f"`kubectl -n {namespace} logs job/{name}`; fix and rerun `dsv3ctl deploy` "
                                      "(the failed Job is replaced)")
        if time.monotonic() >= deadline:
            raise RuntimeFailure(f"prepare Job {namespace}/{name} did not finish within {timeout_s:.0f} s "
                                 f"(waited for condition Complete); pods: " + ("; ".join(seen.values()) or "none"),
                                 hint="raise deploy.prepare.timeout_s, or check the pods' events")
        time.sleep(POLL_S)


def _wait_gone(kube: Kube, namespace: str, name: str, timeout_s: float = 60) -> None:
    batch = _api(kube)
    deadline = time.monotonic() + timeout_s
    while _exists(lambda: batch.read_namespaced_job(name, namespace)) is not None:
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"Job {namespace}/{name} was still there {timeout_s:.0f} s after its deletion")
        time.sleep(0.5)


def prepared(kube: Kube, namespace: str, release: str) -> list[dict[str, str]]:
    """The release's prepare Jobs: [{job, fingerprint, state}] (a succeeded one = a complete artifact directory)."""
    sel = f"{R.L_INSTANCE}={release},{R.L_COMPONENT}={R.COMPONENT}"
    out = []
    for j in _api(kube).list_namespaced_job(namespace, label_selector=sel).items:
        out.append({"job": _name(j), "fingerprint": (j.metadata.labels or {}).get(R.L_FINGERPRINT, ""),
                    "state": _job_state(j)[0]})
    return out


def delete_prepare(kube: Kube, namespace: str, release: str, fingerprint: str | None = None) -> list[str]:
    """Delete the release's prepare and purge Jobs (their pods too) and ConfigMaps, or only the prepare Job of
    ``fingerprint``; returns kind/name deleted."""
    sel = f"{R.L_INSTANCE}={release},{R.L_COMPONENT} in ({R.COMPONENT},{R.PURGE})"
    if fingerprint:
        sel = f"{R.L_INSTANCE}={release},{R.L_COMPONENT}={R.COMPONENT},{R.L_FINGERPRINT}={fingerprint}"
    gone = []
    for j in _api(kube).list_namespaced_job(namespace, label_selector=sel).items:
        _exists(lambda: _api(kube).delete_namespaced_job(_name(j), namespace, propagation_policy="Background"))  # noqa: B023
        gone.append(f"job/{_name(j)}")
    for c in kube.core.list_namespaced_config_map(namespace, label_selector=sel).items:
        _exists(lambda: kube.core.delete_namespaced_config_map(_name(c), namespace))  # noqa: B023
        gone.append(f"configmap/{_name(c)}")
    for p in kube.core.list_namespaced_pod(namespace, label_selector=sel).items:
        # the Job deletion above lets the garbage collector remove these pods concurrently
        _exists(lambda: kube.core.delete_namespaced_pod(_name(p), namespace, grace_period_seconds=0))  # noqa: B023
        gone.append(f"pod/{_name(p)}")
    return gone


def delete_test_pods(kube: Kube, namespace: str, release: str) -> list[str]:
    """`helm test` Pods of the release that a failed test left behind (Helm deletes only succeeded ones)."""
    sel = f"{R.L_INSTANCE}={release},{R.L_COMPONENT}=test"
    gone = []
    for p in kube.core.list_namespaced_pod(namespace, label_selector=sel).items:
        # the Job deletion above lets the garbage collector remove these pods concurrently
        _exists(lambda: kube.core.delete_namespaced_pod(_name(p), namespace, grace_period_seconds=0))  # noqa: B023
        gone.append(f"pod/{_name(p)}")
    return gone


def run_purge(kube: Kube, values: dict[str, Any], namespace: str, fp: str, root: str, keep: list[str], *,
              log: Log = lambda _m: None, timeout_s: float = 3660) -> list[str]:
    """Delete the artifact directories under ``root`` except ``keep`` (+ ``fp``, the current one) with a short
    Job (no GPUs; one pod per GPU node for hostPath), then the prepare-Job records of the removed fingerprints.
    Returns the removed fingerprints (as far as the records know them)."""
    d = values["deploy"]
    rel = d["release"]
    keep = sorted({fp, *keep})
    pods = int(values["parallelism"]["nodes"]) * int(d["replicas"])
    completions = len(gpu_nodes(kube, values)) if d["storage"]["kind"] == "hostPath" and pods > 1 else 1
    cm, job = R.purge_objects(values, fp, root, keep, namespace=namespace, completions=max(1, completions))
    name = job["metadata"]["name"]
    batch = _api(kube)
    if _exists(lambda: batch.read_namespaced_job(name, namespace)) is not None:
        batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        _wait_gone(kube, namespace, name)
    if _exists(lambda: kube.core.read_namespaced_config_map(name, namespace)) is not None:
        kube.core.delete_namespaced_config_map(name, namespace)
    kube.core.create_namespaced_config_map(namespace, _body(cm))
    batch.create_namespaced_job(namespace, _body(job))
    log(f"created purge Job {name}: removes {root}/* except {', '.join(keep)}")
    _watch(kube, namespace, name, fp, root, completions, log, timeout_s)
    removed = [j["fingerprint"] for j in prepared(kube, namespace, rel) if j["fingerprint"] not in keep]
    for f in removed:
        delete_prepare(kube, namespace, rel, fingerprint=f)
    batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
    kube.core.delete_namespaced_config_map(name, namespace)
    return removed
