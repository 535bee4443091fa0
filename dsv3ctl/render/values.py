"""The one place where the spec becomes Helm chart values (chart ``helm/dsv3``).

Design: the chart's values *are* the spec. :func:`render_values` returns ``spec.model_dump(mode="json")``
with the few "auto" fields resolved (image tag, GPU product label, ``launch.rdma``), so every key a user
can write in ``dsv3.yaml`` has the same name, type and range in the chart. The chart's
``values.schema.json`` is the spec's JSON Schema (:func:`chart_values_schema`) and its ``values.yaml`` the
default spec rendered here (:func:`chart_default_values_yaml`); ``tests/test_chart_schema.py`` fails when
either file drifts from the pydantic model (regenerate with ``DSV3CTL_REGEN=1``).

Errors: :class:`dsv3ctl.errors.SpecError` (exit 2) for a spec the chart cannot deploy (the planner's
layout checks, /dev/shm below ``launch.shm_min_gib``, launcher paths outside the storage mount).
Sources: LWS API v1 (sigs.k8s.io/lws v0.9.0 CRD), Helm chart conventions (helm.sh/docs, chart best practices).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from dsv3ctl import __version__
from dsv3ctl.core.hardware import GPUS
from dsv3ctl.core.spec import Spec
from dsv3ctl.errors import SpecError

CHART_NAME = "dsv3"
SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 10**-3}


def chart_dir() -> Path:
    """The chart directory: ``$DSV3CTL_CHART`` if set, else ``helm/dsv3`` of this source tree.

    Raises RuntimeFailure-free: the caller checks existence (the CLI says how to point at the chart).
    """
    env = os.environ.get("DSV3CTL_CHART")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "helm" / CHART_NAME


def quantity_bytes(q: str) -> float:
    """A Kubernetes quantity ("64Gi", "1.5T", "500M") in bytes. Raises ValueError when malformed."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", q)
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {q!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def image_tag(spec: Spec) -> str:
    """``image.tag``, or ``<dsv3ctl version>-<serving.mode>`` when empty (the tag `dsv3ctl image build` uses)."""
    return spec.image.tag or f"{__version__}-{spec.serving.mode}"


def artifact_fingerprint(spec: Spec) -> str:
    """The fingerprint of the spec's artifacts (:func:`dsv3ctl.render.artifacts.fingerprint` of the image the
    pods run)."""
    from dsv3ctl.render.artifacts import fingerprint

    return fingerprint(spec, f"{spec.image.repository}:{image_tag(spec)}")


def _check(spec: Spec) -> None:
    from dsv3ctl.core.planner import require_layout

    require_layout(spec, "the chart cannot deploy")
    d, launch = spec.deploy, spec.launch
    if d.storage.kind == "existingClaim" and not d.storage.claim_name:
        raise SpecError("deploy.storage.claim_name is empty but deploy.storage.kind=existingClaim needs the PVC's name; "
                        "set claim_name, or use kind=newClaim / kind=hostPath")
    shm = quantity_bytes(d.shm_size)
    if shm < launch.shm_min_gib * 2**30:
        raise SpecError(f"deploy.shm_size={d.shm_size} is below launch.shm_min_gib={launch.shm_min_gib} GiB, so the "
                        f"launcher's preflight would refuse to start; use shm_size={int(launch.shm_min_gib) or 1}Gi or more")
    mount = d.storage.mount_path.rstrip("/") + "/"
    for name in ("model_repository", "model_dir"):
        path = getattr(launch, name)
        if path and not (path + "/").startswith(mount):
            raise SpecError(f"launch.{name}={path!r} is not under deploy.storage.mount_path={d.storage.mount_path!r}, "
                            f"so the pods would not see it; use a path under {mount} or change mount_path")
    if spec.serving.frontend == "trtllm-serve" and spec.serving.mode != "llmapi":
        raise SpecError("serving.frontend=trtllm-serve needs serving.mode=llmapi; use frontend=tritonserver or mode=llmapi")
    from dsv3ctl.core.deploy_rules import deploy_checks

    bad = [c.message for c in deploy_checks(spec) if not c.ok]
    if bad:
        raise SpecError("\n".join(bad))
    if d.gpu_product_label is None and spec.hardware.gpu not in GPUS:
        raise SpecError(f"hardware.gpu={spec.hardware.gpu!r} is unknown; use one of {', '.join(GPUS)}")


def render_values(spec: Spec, namespace: str | None = None, release: str | None = None) -> dict[str, Any]:
    """Chart values for ``spec`` (a JSON-compatible dict that ``values.schema.json`` accepts).

    ``namespace``/``release`` override ``deploy.namespace``/``deploy.release`` (CLI flags). Resolved here:
    ``image.tag`` (empty -> ``<version>-<mode>``), ``deploy.gpu_product_label`` (null -> the
    ``nvidia.com/gpu.product`` value of ``hardware.gpu``), ``launch.rdma`` (``deploy.rdma.enabled``, ``auto``
    resolved by :func:`dsv3ctl.core.deploy_rules.rdma_enabled`), ``deploy.max_surge`` (null -> 1 when
    replicas > 1, else 0), ``deploy.memory`` (empty -> :func:`dsv3ctl.core.deploy_rules.pod_memory`), ``deploy.termination_grace_s``
    (null -> :func:`dsv3ctl.core.deploy_rules.termination_grace_s`), and the ``launch.*`` artifact paths
    (``model_repository``, ``engine_dir``, ``trtllm_checkpoint_dir``) moved into the content-addressed directory
    of the spec's fingerprint (:mod:`dsv3ctl.render.artifacts`) unless ``deploy.storage.artifacts_dir`` is empty.
    Raises SpecError (exit 2) when the chart cannot deploy the spec (see the module docstring).
    """
    from dsv3ctl.core.deploy_rules import pod_memory, rdma_enabled, termination_grace_s
    from dsv3ctl.render.artifacts import artifact_paths

    _check(spec)
    values = spec.model_dump(mode="json")
    values["image"]["tag"] = image_tag(spec)
    if spec.deploy.gpu_product_label is None:
        values["deploy"]["gpu_product_label"] = GPUS[spec.hardware.gpu].product_label
    values["launch"]["rdma"] = rdma_enabled(spec)[0]
    values["deploy"]["max_surge"] = spec.deploy.effective_max_surge  # no null in the values (Helm 4 drops them)
    values["deploy"]["memory"] = pod_memory(spec)
    values["deploy"]["termination_grace_s"] = termination_grace_s(spec)
    values["launch"].update(artifact_paths(spec, artifact_fingerprint(spec)))
    if namespace:
        values["deploy"]["namespace"] = namespace
    if release:
        values["deploy"]["release"] = release
    return values


def values_yaml(values: dict[str, Any]) -> str:
    """Values as YAML (PyYAML, key order kept): what ``dsv3ctl render`` writes and ``helm -f`` reads."""
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False, width=120)


def chart_values_schema() -> dict[str, Any]:
    """The chart's ``values.schema.json``: the spec's JSON Schema (pydantic, draft 2020-12).

    Every spec model forbids unknown keys, so every object in the schema has ``additionalProperties: false``
    (free-form Kubernetes objects such as ``deploy.affinity`` excepted).
    """
    schema = {"$schema": SCHEMA_DRAFT, **Spec.model_json_schema(mode="validation")}
    schema["title"] = "dsv3 chart values (= the dsv3ctl spec, dsv3.yaml)"
    return schema


def chart_values_schema_text() -> str:
    return json.dumps(chart_values_schema(), indent=2) + "\n"


def chart_default_values_yaml() -> str:
    """The chart's ``values.yaml``: the embedded default spec rendered by :func:`render_values`."""
    from dsv3ctl.core.spec import load_spec

    head = ("# Chart values = the dsv3ctl spec (dsv3.yaml), rendered from the embedded default spec.\n"
            "# GENERATED by dsv3ctl.render.values.chart_default_values_yaml(); do not edit by hand:\n"
            "# change the spec model and regenerate with DSV3CTL_REGEN=1 pytest tests/test_chart_schema.py.\n"
            "# Every key is documented in values.schema.json and docs/deploy.md.\n")
    return head + values_yaml(render_values(load_spec(None)))
