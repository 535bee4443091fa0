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
import re
import textwrap
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
    """The chart directory: ``$DSV3CTL_CHART`` if set, else the chart bundled in the installed wheel, else
    ``helm/dsv3`` of the source checkout (:func:`dsv3ctl.resources.chart_dir`). The caller checks existence
    (the CLI says how to point at the chart)."""
    from dsv3ctl.resources import chart_dir as find

    return find()


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
    """Refuse (SpecError, exit 2) a spec the chart cannot deploy: the planner's layout checks and its deploy
    rules (:func:`dsv3ctl.core.deploy_rules.deploy_checks`); ``dsv3ctl plan`` runs the same checks, so it
    refuses everything this refuses."""
    from dsv3ctl.core.deploy_rules import deploy_checks
    from dsv3ctl.core.planner import require_layout

    require_layout(spec, "the chart cannot deploy")
    bad = [c.message for c in deploy_checks(spec) if not c.ok]
    if bad:
        raise SpecError("\n".join(bad), hint=f"`{spec.command('plan')}` shows every check")


def render_values(spec: Spec, namespace: str | None = None, release: str | None = None, *,
                  check: bool = True) -> dict[str, Any]:
    """Chart values for ``spec`` (a JSON-compatible dict that ``values.schema.json`` accepts).

    ``namespace``/``release`` override ``deploy.namespace``/``deploy.release`` (CLI flags). Resolved here:
    ``image.tag`` (empty -> ``<version>-<mode>``), ``deploy.gpu_product_label`` (null -> the
    ``nvidia.com/gpu.product`` value of ``hardware.gpu``), ``launch.rdma`` (``deploy.rdma.enabled``, ``auto``
    resolved by :func:`dsv3ctl.core.deploy_rules.rdma_enabled`), ``deploy.max_surge`` (null -> 1 when
    replicas > 1, else 0), ``deploy.memory`` (empty -> :func:`dsv3ctl.core.deploy_rules.pod_memory`), ``deploy.termination_grace_s``
    (null -> :func:`dsv3ctl.core.deploy_rules.termination_grace_s`), and the ``launch.*`` artifact paths
    (``model_repository``, ``engine_dir``, ``trtllm_checkpoint_dir``) moved into the content-addressed directory
    of the spec's fingerprint (:mod:`dsv3ctl.render.artifacts`) unless ``deploy.storage.artifacts_dir`` is empty.
    First ``deploy.platform``'s preset fills the keys the spec leaves unset (:func:`dsv3ctl.core.platforms.apply_platform`,
    the one place a preset is applied; ``dsv3ctl plan`` lists what it set); everything below sees the result.
    Raises SpecError (exit 2) when the chart cannot deploy the spec (see the module docstring);
    ``check=False`` skips that (for tests of the chart's own guards, which must refuse at least as much).
    """
    from dsv3ctl.core.deploy_rules import pod_memory, rdma_enabled, termination_grace_s
    from dsv3ctl.core.platforms import apply_platform
    from dsv3ctl.render.artifacts import artifact_paths

    spec, _ = apply_platform(spec)
    if check:
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


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A schema node with ``$ref`` followed (its own description kept)."""
    ref = node.get("$ref")
    if ref:
        target = dict(defs[ref.rsplit("/", 1)[-1]])
        if "description" in node:
            target["description"] = node["description"]
        return target
    return node


def _describe(node: dict[str, Any], defs: dict[str, Any]) -> tuple[str, str]:
    """(type text, description) of a schema property."""
    node = _resolve(node, defs)
    alts = node.get("anyOf") or node.get("oneOf")
    if alts:
        types = [_describe(a, defs)[0] for a in alts]
        typ = " or ".join(dict.fromkeys(types))
    elif "enum" in node:
        typ = " | ".join(json.dumps(e) for e in node["enum"])
    elif "const" in node:
        typ = json.dumps(node["const"])
    else:
        typ = str(node.get("type", "object"))
        if typ == "array" and isinstance(node.get("items"), dict):
            typ = f"list of {_describe(node['items'], defs)[0]}"
    return typ, " ".join(str(node.get("description", "")).split())


def _rows(schema: dict[str, Any], defs: dict[str, Any], values: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    out = []
    for key, prop in (schema.get("properties") or {}).items():
        node = _resolve(prop, defs)
        path = f"{prefix}{key}"
        val = values.get(key) if isinstance(values, dict) else None
        if node.get("properties"):
            out += _rows(node, defs, val, path + ".")
            continue
        typ, desc = _describe(prop, defs)
        out.append((path, typ, json.dumps(val), desc))
    return out


def chart_readme_text() -> str:
    """helm/dsv3/README.md: every value (dotted path, type, default as rendered, description) from the values
    schema; ``tests/test_chart_schema.py`` fails when the file drifts (DSV3CTL_REGEN=1 regenerates)."""
    from dsv3ctl.core.spec import load_spec

    schema = chart_values_schema()
    defs = schema.get("$defs", {})
    values = render_values(load_spec(None))
    lines = [
        "# dsv3 chart",
        "",
        "DeepSeek-V3 on Triton Inference Server + TensorRT-LLM across GPU nodes, one LeaderWorkerSet group per model",
        "instance. The values are the dsv3ctl spec (`dsv3.yaml`): `values.schema.json` is its JSON Schema and",
        "`values.yaml` the rendered default. Deploy with `dsv3ctl deploy` (preflight, the prepare Job, then",
        "`helm upgrade --install`); see docs/deploy.md. Defaults below are as `dsv3ctl` renders them (auto fields",
        "resolved for the default spec).",
        "",
        "GENERATED from values.schema.json by `dsv3ctl.render.values.chart_readme_text()`; do not edit by hand.",
        "",
        "| value | type | default | description |",
        "|---|---|---|---|",
    ]
    for path, typ, default, desc in _rows(schema, defs, values, ""):
        cell = lambda t: t.replace("|", "\\|")  # noqa: E731
        lines.append(f"| `{path}` | {cell(typ)} | `{cell(default)}` | {cell(desc)} |")
    return "\n".join(lines) + "\n"


def _commented(values: dict[str, Any], schema: dict[str, Any], defs: dict[str, Any], indent: int) -> list[str]:
    out: list[str] = []
    pad = " " * indent
    for key, val in values.items():
        prop = (schema.get("properties") or {}).get(key, {})
        node = _resolve(prop, defs)
        desc = _describe(prop, defs)[1] if prop else ""
        if desc:
            out += [f"{pad}# {line}" for line in textwrap.wrap(desc, width=116 - indent)]
        if isinstance(val, dict) and val and node.get("properties"):
            out.append(f"{pad}{key}:")
            out += _commented(val, node, defs, indent + 2)
        else:
            text = yaml.safe_dump({key: val}, sort_keys=False, default_flow_style=False, width=120).rstrip("\n")
            out += [pad + line for line in text.splitlines()]
    return out


def chart_default_values_yaml() -> str:
    """The chart's ``values.yaml``: the embedded default spec rendered by :func:`render_values`, each key
    preceded by its schema description as a comment."""
    from dsv3ctl.core.spec import load_spec

    head = ("# Chart values = the dsv3ctl spec (dsv3.yaml), rendered from the embedded default spec.\n"
            "# GENERATED by dsv3ctl.render.values.chart_default_values_yaml(); do not edit by hand:\n"
            "# change the spec model and regenerate with DSV3CTL_REGEN=1 pytest tests/test_chart_schema.py.\n"
            "# Every key is documented in values.schema.json, README.md and docs/deploy.md.\n")
    schema = chart_values_schema()
    body = _commented(render_values(load_spec(None)), schema, schema.get("$defs", {}), 0)
    return head + "\n".join(body) + "\n"
