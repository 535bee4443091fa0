"""``deploy.platform`` presets: what a Kubernetes platform documents for multi-node GPU + RDMA serving (the RDMA/EFA
extended resource, the NCCL/libfabric environment, the GPU node label, tolerations, pod annotations).

The values and where each was read live in ``dsv3ctl/data/platforms.json`` (one source per value; what no public
source gave is left out and said in the platform's ``notes``). :func:`apply_platform` is the one function that
applies a preset: it fills only the keys the spec leaves unset (pydantic's ``model_fields_set`` at every level; for
one entry of a mapping such as ``deploy.nccl.extra_env[FI_PROVIDER]``, the entry being absent), so a key written in
``dsv3.yaml`` always wins. :func:`dsv3ctl.render.values.render_values` renders the chart values from its result and
:func:`dsv3ctl.core.deploy_rules.deploy_checks` reports what it set (``dsv3ctl plan``, check ``platform``).
``generic`` sets nothing: the spec defaults, unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel

from dsv3ctl.core.spec import PLATFORMS, Spec

_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*)(?:\[([^\]]+)\])?$")


@dataclass(frozen=True)
class PresetKey:
    """One key a preset sets: ``path`` (dotted spec path, ``[entry]`` for one mapping entry), the value, its source."""

    path: str
    value: Any
    source: str


@cache
def platforms_data() -> dict[str, Any]:
    """``dsv3ctl/data/platforms.json`` (``platforms`` -> name -> ``summary``, ``keys``, ``notes``)."""
    data: dict[str, Any] = json.loads((resources.files("dsv3ctl.data") / "platforms.json").read_text(encoding="utf-8"))
    return data


def preset_keys(platform: str, gpu: str) -> list[PresetKey]:
    """Every key preset ``platform`` sets for ``hardware.gpu=gpu`` (``by_gpu`` entries resolved; GPUs a key does
    not list get nothing from it), in the data file's order."""
    entry = platforms_data()["platforms"][platform]
    out = []
    for path, spec in entry["keys"].items():
        if "by_gpu" in spec:
            spec = spec["by_gpu"].get(gpu)
            if spec is None:
                continue
        out.append(PresetKey(path, spec["value"], spec["source"]))
    return out


def split_key(path: str) -> tuple[list[str], str | None]:
    """``deploy.nccl.extra_env[FI_PROVIDER]`` -> (["deploy", "nccl", "extra_env"], "FI_PROVIDER")."""
    m = _KEY.match(path)
    if not m:
        raise ValueError(f"not a preset key: {path!r} (dotted spec path, optionally [entry])")
    return m.group(1).split("."), m.group(2)


def user_set(spec: Spec, path: str) -> bool:
    """Whether the spec's author wrote ``path`` (every level in ``model_fields_set``; a mapping entry present)."""
    parts, entry = split_key(path)
    node: Any = spec
    for part in parts:
        if not isinstance(node, BaseModel) or part not in node.model_fields_set:
            return False
        node = getattr(node, part)
    return entry is None or (isinstance(node, dict) and entry in node)


def _assign(spec: Spec, path: str, value: Any) -> None:
    parts, entry = split_key(path)
    node: Any = spec
    for part in parts[:-1]:
        node = getattr(node, part)
    if entry is not None:
        value = {**getattr(node, parts[-1]), entry: value}
    setattr(node, parts[-1], value)  # validate_assignment: the spec's own rules check the preset's value


def apply_platform(spec: Spec) -> tuple[Spec, list[PresetKey]]:
    """(the spec with ``deploy.platform``'s preset filled in, the keys it set). Pure: ``spec`` is not changed; keys
    the spec sets itself are kept and left out of the list."""
    platform = spec.deploy.platform
    keys = [k for k in preset_keys(platform, spec.hardware.gpu) if not user_set(spec, k.path)]
    if not keys:
        return spec, []
    out = spec.model_copy(deep=True)
    for k in keys:
        _assign(out, k.path, k.value)
    return out, keys


def platform_notes(platform: str) -> list[str]:
    """What the platform documents that the preset leaves out, and why (the data file's ``notes``)."""
    return list(platforms_data()["platforms"][platform].get("notes") or [])


def platform_message(spec: Spec) -> str:
    """The ``platform`` plan check's text: the preset, each key it set with its value and source, and the keys the
    spec overrode."""
    platform = spec.deploy.platform
    _, applied = apply_platform(spec)
    every = preset_keys(platform, spec.hardware.gpu)
    kept = [k.path for k in every if k not in applied]
    if not every:
        head = f"deploy.platform={platform}: no preset keys" + ("" if platform == "generic" else
                                                                 f" for hardware.gpu={spec.hardware.gpu}")
    else:
        head = f"deploy.platform={platform} set " + ("; ".join(
            f"{k.path}={json.dumps(k.value)} ({k.source})" for k in applied) or "nothing")
        if kept:
            head += "; kept from the spec: " + ", ".join(kept)
    return head


def check_platforms_data() -> list[str]:
    """Problems in the data file (a key without a value or source, an unknown platform or GPU); empty when sound."""
    from dsv3ctl.core.hardware import GPUS

    errs = []
    table = platforms_data()["platforms"]
    if set(table) != set(PLATFORMS):
        errs.append(f"platforms {sorted(table)} != deploy.platform choices {sorted(PLATFORMS)}")
    for name, entry in table.items():
        for path, spec in entry["keys"].items():
            try:
                split_key(path)
            except ValueError as e:
                errs.append(f"{name}: {e}")
            leaves = spec["by_gpu"].items() if "by_gpu" in spec else [("", spec)]
            for gpu, leaf in leaves:
                where = f"{name}: {path}" + (f" [{gpu}]" if gpu else "")
                if gpu and gpu not in GPUS:
                    errs.append(f"{where}: unknown GPU")
                if "value" not in leaf or not str(leaf.get("source", "")).strip():
                    errs.append(f"{where}: needs a value and a source")
    return errs
