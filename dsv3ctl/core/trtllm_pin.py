"""Which TensorRT-LLM source (``image.trtllm_commit``) can do what, and what a spec needs from it.

The table is ``dsv3ctl/data/trtllm_commits.json``: full commit SHAs and branch names, each with the
capabilities read in that source (``has``), those shown absent there (``lacks``) and where each was read
(``provenance``). A branch name (``deepseek``) is resolved to a SHA when the image is built
(:mod:`dsv3ctl.render.image`); the image records the SHA in :data:`STAMP_PATH` and in the label
``ai.dsv3ctl.trtllm-commit``. Pure: reads package data only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

#: Where the engine image records the TensorRT-LLM commit it was built from (docker/Dockerfile).
STAMP_PATH = "/opt/tensorrt_llm/TRTLLM_COMMIT"
#: The branch the default spec builds: the deepseek preview branch with PR #2719 (FP8 weights).
DEFAULT_REF = "deepseek"


@dataclass(frozen=True)
class Known:
    """One row of the table: ``key`` (SHA or branch), capabilities it has / lacks, provenance lines."""

    key: str
    has: frozenset[str]
    lacks: frozenset[str]
    provenance: tuple[str, ...]
    verified_from_source: bool
    branch: bool


@cache
def _table() -> dict[str, Any]:
    return dict(json.loads((resources.files("dsv3ctl.data") / "trtllm_commits.json").read_text()))


def capability_names() -> dict[str, str]:
    """Capability name -> what it means (the table's ``capabilities``)."""
    return dict(_table()["capabilities"])


def lookup(commit: str) -> Known | None:
    """The table row of ``commit`` (a full or abbreviated SHA, >= 7 hex digits, or a branch name); None if unknown."""
    rows = _table()["commits"]
    key = next((k for k in rows if k == commit or (len(commit) >= 7 and k.startswith(commit))), None)
    if key is None:
        return None
    r = rows[key]
    return Known(key=key, has=frozenset(r["has"]), lacks=frozenset(r["lacks"]), provenance=tuple(r["provenance"]),
                 verified_from_source=bool(r.get("verified_from_source", True)), branch=bool(r.get("branch")))


def needs(precision: str, mode: str) -> set[str]:
    """Capabilities engine-mode conversion of ``precision`` needs (llmapi mode needs none of these:
    the PyTorch backend reads the Hugging Face checkpoint)."""
    if mode != "engine":
        return set()
    return {"fp8": {"fp8"}, "bf16": {"bf16"}, "fp16": {"fp16"}}[precision]


def good_refs(need: set[str]) -> list[str]:
    """Table keys that have every capability in ``need`` (branch names first)."""
    rows = [lookup(k) for k in _table()["commits"]]
    ok = [r for r in rows if r and need <= r.has]
    return [r.key for r in sorted(ok, key=lambda r: (not r.branch, r.key))]


def missing(commit: str, precision: str, mode: str) -> tuple[set[str], Known | None]:
    """(capabilities the spec needs that ``commit`` is known to lack, its table row)."""
    k = lookup(commit)
    need = needs(precision, mode)
    if k is None:
        return set(), None
    return need & k.lacks, k
