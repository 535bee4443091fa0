"""The prepare Job (an ordinary ``batch/v1`` Job, not a Helm hook) and its spec ConfigMap, as dicts.

``dsv3ctl prepare`` / ``dsv3ctl deploy`` create them before the group is installed or upgraded and watch the Job
with its own deadline (``deploy.prepare.timeout_s``). Why not a hook: Helm runs pre-install/pre-upgrade hooks
before it creates the release's resources (helm.sh/helm/v4 v4.2.4 pkg/action/install.go:508-513, then
``KubeClient.Create`` of the resources), so a hook Job mounting a chart-created claim waits for a claim that
does not exist yet; and Helm waits for hooks only up to ``--timeout``.

The pod runs ``dsv3ctl launch prepare`` (:mod:`dsv3ctl.adapters.prepare`) with the spec of these values, which
writes into the content-addressed directory of the spec's fingerprint (:mod:`dsv3ctl.render.artifacts`) and
touches ``<dir>/.ready`` last; a pod that finds the marker exits at once. Per-node prepare (hostPath on a
multi-node group): ``completions = parallelism = nodes``, one pod per node (required pod anti-affinity on
``kubernetes.io/hostname`` against the Job's own pods), so every GPU node that matches gets the files.
GPUs: requested only in engine mode (trtllm-build); llmapi prepares without GPUs. Pure: values in, dicts out.
"""

from __future__ import annotations

from typing import Any

from dsv3ctl.core.names import Names
from dsv3ctl.render.artifacts import READY_MARKER

L_INSTANCE = "app.kubernetes.io/instance"
L_COMPONENT = "app.kubernetes.io/component"
L_FINGERPRINT = "dsv3ctl.io/fingerprint"
COMPONENT = "prepare"
SPEC_MOUNT = "/etc/dsv3ctl/spec"


def job_name(names: Names, fp: str) -> str:
    """``<fullname>-prepare-<fingerprint>`` (<= 63 characters: fullname <= 40, + 9 + 16)."""
    return f"{names.fullname}-prepare-{fp}"


def claim_name(deploy: dict[str, Any]) -> str:
    """The models claim (``dsv3.claimName``): ``deploy.storage.claim_name``, else ``<fullname>-models``."""
    return str(deploy["storage"]["claim_name"] or f"{Names.of(deploy).fullname}-models")


def labels(release: str, fp: str) -> dict[str, str]:
    """Labels of the Job, its pods and its ConfigMap. No ``app.kubernetes.io/name``: the serving pods' required
    anti-affinity selects ``name`` + ``instance`` (one serving pod per node), and a prepare pod carrying both
    could never share a node with a running group (e.g. llmapi prepare, which needs no GPUs)."""
    return {L_INSTANCE: release, "app.kubernetes.io/part-of": "dsv3ctl", "app.kubernetes.io/managed-by": "dsv3ctl",
            L_COMPONENT: COMPONENT, L_FINGERPRINT: fp}


def marker_path(values: dict[str, Any], artifact_dir: str, fp: str) -> str:
    """The ready marker: ``<artifact dir>/.ready``, or ``<mount>/.dsv3ctl/ready-<fp>`` without artifact dirs."""
    if artifact_dir:
        return f"{artifact_dir}/{READY_MARKER}"
    return f"{values['deploy']['storage']['mount_path'].rstrip('/')}/.dsv3ctl/ready-{fp}"


def _script(marker: str, lock_wait_s: int) -> str:
    return (
        "set -eu\n"
        f'M={marker}\n'
        'mkdir -p "$(dirname "$M")"\n'
        'if [ -e "$M" ]; then echo "prepare: $M exists, nothing to do"; exit 0; fi\n'
        'exec 9>"$M.lock"\n'
        f"flock -w {lock_wait_s} 9\n"
        'if [ -e "$M" ]; then echo "prepare: done by another run"; exit 0; fi\n'
        "dsv3ctl launch prepare\n"
        'touch "$M"\n'
        'echo "prepare: wrote $M"\n'
    )


def prepare_objects(values: dict[str, Any], fp: str, artifact_dir: str, *, namespace: str,
                    completions: int = 1) -> list[dict[str, Any]]:
    """[ConfigMap, Job] for fingerprint ``fp`` whose artifacts go to ``artifact_dir``.

    ``values`` are chart values (:func:`dsv3ctl.render.values.render_values`); ``completions`` > 1 runs one pod
    per node (per-node hostPath). The ConfigMap holds the spec the pod reads through ``DSV3CTL_SPEC``.
    """
    import yaml

    d, img, par = values["deploy"], values["image"], values["parallelism"]
    rel, names = d["release"], Names.of(d)
    name = job_name(names, fp)
    lab = labels(rel, fp)
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": name, "namespace": namespace, "labels": lab},
          "data": {"spec.yaml": yaml.safe_dump(values, sort_keys=False)}}
    gpu = str(par["gpus_per_node"]) if values["serving"]["mode"] == "engine" else None
    res: dict[str, Any] = {"requests": {"cpu": d["cpu"], "memory": d["memory"], "ephemeral-storage": d["ephemeral_storage"]},
                           "limits": {"cpu": d["cpu"], "memory": d["memory"], "ephemeral-storage": d["ephemeral_storage"]}}
    if gpu:
        res["requests"]["nvidia.com/gpu"] = gpu
        res["limits"]["nvidia.com/gpu"] = gpu
    env: list[dict[str, Any]] = [{"name": "DSV3CTL_SPEC", "value": f"{SPEC_MOUNT}/spec.yaml"},
                                 {"name": "DSV3CTL_ARTIFACT_FINGERPRINT", "value": fp}]
    if d["hf_token_secret"]:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": d["hf_token_secret"], "key": "HF_TOKEN"}}})
    env += [{"name": k, "value": v} for k, v in d["env"].items()]
    env += [{"name": e["name"], "valueFrom": {"secretKeyRef": {"name": e["secret"], "key": e["key"],
                                                               "optional": e["optional"]}}}
            for e in d["env_from_secrets"]]
    st = d["storage"]
    mount: dict[str, Any] = {"name": "models", "mountPath": st["mount_path"]}
    if st["sub_path"]:
        mount["subPath"] = st["sub_path"]
    if st["kind"] == "hostPath":
        vol: dict[str, Any] = {"name": "models", "hostPath": {"path": st["host_path"], "type": "DirectoryOrCreate"}}
    else:
        claim = claim_name(d)
        vol = {"name": "models", "persistentVolumeClaim": {"claimName": claim}}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "prepare", "image": f"{img['repository']}:{img['tag']}", "imagePullPolicy": img["pull_policy"],
            "command": ["/bin/sh", "-c"],
            "args": [_script(marker_path(values, artifact_dir, fp), int(d["prepare"]["timeout_s"]))],
            "env": env, "resources": res,
            "volumeMounts": [mount, {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True}],
        }],
        "volumes": [vol, {"name": "spec", "configMap": {"name": name}}],
    }
    sel = dict(d["node_selector"])
    if d["gpu_product_label"]:
        sel["nvidia.com/gpu.product"] = d["gpu_product_label"]
    if sel:
        pod["nodeSelector"] = sel
    if d["tolerations"]:
        pod["tolerations"] = d["tolerations"]
    if d["image_pull_secrets"]:
        pod["imagePullSecrets"] = [{"name": s} for s in d["image_pull_secrets"]]
    if d["priority_class_name"]:
        pod["priorityClassName"] = d["priority_class_name"]
    if d["scheduler_name"]:
        pod["schedulerName"] = d["scheduler_name"]
    if completions > 1:
        pod["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {L_INSTANCE: rel, L_COMPONENT: COMPONENT, L_FINGERPRINT: fp}}}]}}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": namespace, "labels": lab},
           "spec": {"backoffLimit": int(d["prepare"]["backoff_limit"]),
                    "activeDeadlineSeconds": int(d["prepare"]["timeout_s"]),
                    "completions": completions, "parallelism": completions,
                    "template": {"metadata": {"labels": lab}, "spec": pod}}}
    return [cm, job]


def claim_object(values: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The chart's PVC (``kind: newClaim``, helm/dsv3/templates/pvc.yaml) with Helm's ownership metadata, so that
    ``dsv3ctl`` can create it before the prepare Job and ``helm upgrade --install`` adopts it: Helm takes over an
    existing object whose label ``app.kubernetes.io/managed-by=Helm`` and annotations
    ``meta.helm.sh/release-name``/``-namespace`` name the release (helm.sh/helm/v4 v4.2.4
    pkg/action/validate.go:107-130 ``checkOwnership``; install.go:518-521 updates the adopted objects)."""
    d = values["deploy"]
    st, rel, names = d["storage"], d["release"], Names.of(d)
    spec: dict[str, Any] = {"accessModes": list(st["access_modes"]),
                            "resources": {"requests": {"storage": st["size"]}}}
    if st["storage_class"]:
        spec["storageClassName"] = st["storage_class"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name(d), "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": names.name, L_INSTANCE: rel,
                                    "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/part-of": "dsv3ctl"},
                         "annotations": {"meta.helm.sh/release-name": rel, "meta.helm.sh/release-namespace": namespace,
                                         "helm.sh/resource-policy": "keep"}},
            "spec": spec}


PURGE = "purge"


def purge_objects(values: dict[str, Any], fp: str, root: str, keep: list[str], *, namespace: str,
                  completions: int = 1) -> list[dict[str, Any]]:
    """[ConfigMap, Job] that delete every fingerprint directory under ``root`` (``<mount>/<artifacts_dir>``)
    except ``keep`` (16-hex fingerprints; the current one among them). No GPUs; labelled component ``purge``."""
    import re

    bad = [k for k in keep if not re.fullmatch(r"[0-9a-f]{16}", k)]
    if bad or not root:
        raise ValueError(f"purge needs artifact dirs and 16-hex fingerprints to keep, got root={root!r} keep={bad}")
    objs = prepare_objects(values, fp, f"{root}/{fp}", namespace=namespace, completions=completions)
    name = f"{Names.of(values['deploy']).fullname}-purge-{fp}"
    keep_args = " ".join(f"! -name {k}" for k in sorted(set(keep)))
    script = ("set -eu\n"
              f'R={root}\n'
              'test -d "$R" || { echo "purge: $R does not exist"; exit 0; }\n'
              f'find "$R" -mindepth 1 -maxdepth 1 -type d {keep_args} -print -exec rm -rf {{}} +\n'
              'echo "purge: done"\n')
    for o in objs:
        o["metadata"]["name"] = name
        o["metadata"]["labels"] = {**o["metadata"]["labels"], L_COMPONENT: PURGE}
    cm, job = objs
    pod = job["spec"]["template"]
    pod["metadata"]["labels"] = job["metadata"]["labels"]
    c = pod["spec"]["containers"][0]
    c["name"], c["args"] = PURGE, [script]
    for k in ("requests", "limits"):
        c["resources"][k].pop("nvidia.com/gpu", None)
    pod["spec"]["volumes"][1]["configMap"]["name"] = name
    if "affinity" in pod["spec"]:
        pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
            "labelSelector"]["matchLabels"][L_COMPONENT] = PURGE
    job["spec"]["activeDeadlineSeconds"] = 3600
    return [cm, job]
