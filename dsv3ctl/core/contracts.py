"""Contract data: what each external tool dsv3ctl drives accepts, read from that tool's source.

Each file ``dsv3ctl/data/contracts/<name>.json`` describes one tool or one config surface::

    {
      "tool": "convert_checkpoint.py",           # what it is, in words
      "kind": "argparse" | "fields",             # command-line flags, or keys/fields of a config object
      "source": {"repo": "NVIDIA/TensorRT-LLM", "ref": "deepseek", "commit": "<40 hex>",
                 "file": "examples/deepseek_v3/convert_checkpoint.py"},
      "items": {"--model_dir": {"line": 31, "type": "str", "default": null, "choices": null,
                                "action": "store", "file": null}, ...}
    }

``items`` maps a flag (with its dashes) or a field/key name to where it was read (``line``, and ``file`` when it
is not ``source.file``) and what it takes. dsv3ctl's renderers and the test doubles (stand-in executables) both
read these files, so a double can never accept a flag the real tool rejects. The loader is pure: it reads
package data only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Item:
    """One accepted flag or field: ``name`` as the tool spells it, ``line`` where it was read."""

    name: str
    line: int | None
    type: str | None = None
    default: Any = None
    choices: tuple[Any, ...] | None = None
    action: str | None = None
    file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Contract:
    """A tool's accepted items plus the provenance of the whole list (repo, ref, commit, file)."""

    name: str
    tool: str
    kind: str
    source: dict[str, str]
    items: dict[str, Item]

    def accepts(self, name: str) -> bool:
        return name in self.items

    def missing(self, names: list[str] | set[str]) -> list[str]:
        """The names in ``names`` this tool does not accept, in their order."""
        return [n for n in names if n not in self.items]

    def where(self, name: str) -> str:
        """``repo@commit:file:line`` of one item (or of the whole list when the item is unknown)."""
        s = self.source
        it = self.items.get(name)
        f = (it.file if it and it.file else None) or s.get("file", "?")
        line = f":{it.line}" if it and it.line else ""
        return f"{s.get('repo', '?')}@{s.get('commit', s.get('ref', '?'))[:12]}:{f}{line}"


_KNOWN = {"line", "type", "default", "choices", "action", "file"}


def names() -> list[str]:
    """Names of every contract file shipped with the package (without ``.json``)."""
    base = resources.files("dsv3ctl.data") / "contracts"
    return sorted(p.name[:-5] for p in base.iterdir() if p.name.endswith(".json"))


@cache
def load(name: str) -> Contract:
    """Load ``dsv3ctl/data/contracts/<name>.json``; raises ``FileNotFoundError`` for an unknown name."""
    raw = json.loads((resources.files("dsv3ctl.data") / "contracts" / f"{name}.json").read_text())
    items = {}
    for key, v in raw["items"].items():
        v = v or {}
        ch = v.get("choices")
        items[key] = Item(name=key, line=v.get("line"), type=v.get("type"), default=v.get("default"),
                          choices=tuple(ch) if ch is not None else None, action=v.get("action"),
                          file=v.get("file"), extra={k: x for k, x in v.items() if k not in _KNOWN})
    return Contract(name=name, tool=raw["tool"], kind=raw["kind"], source=dict(raw["source"]), items=items)


_TYPES: dict[str | None, Any] = {"int": int, "float": float, "str": str, "path": str, None: str}


def argparser(name: str, caps: frozenset[str] | set[str] | None = None, positionals: tuple[str, ...] = (),
              prog: str | None = None, without: tuple[str, ...] = ()) -> Any:
    """An ``argparse.ArgumentParser`` that accepts exactly the items of contract ``name`` (kind argparse),
    with their types, ``choices``, ``nargs`` and ``required`` -- what the test doubles (stand-in
    executables) parse with, so they reject what the real tool rejects. An item with ``requires: C``
    (a capability of :mod:`dsv3ctl.core.trtllm_pin`) is left out unless ``C`` is in ``caps``; the items in
    ``without`` are left out (a tool older than the contract).
    ``type: none`` (tritonserver flags without a value) and ``store_true``/``store_false`` take no value."""
    import argparse

    c = load(name)
    own_help = "--help" in c.items
    p = argparse.ArgumentParser(prog=prog or c.tool, description=f"contract {name}: {c.where('')}",
                                add_help=not own_help)
    for pos in positionals:
        p.add_argument(pos)
    for key, it in c.items.items():
        req = it.extra.get("requires")
        if (req and req not in (caps or set())) or key in without:
            continue
        if key == "--help":
            p.add_argument("-h", "--help", action="help")
            continue
        kw: dict[str, Any] = {"dest": "opt_" + key.lstrip("-").replace("-", "_")}
        act = it.action
        if act in ("store_true", "store_false") or it.type == "none":
            kw["action"] = act if act in ("store_true", "store_false") else "store_true"
        else:
            if act == "append":
                kw["action"] = "append"
            kw["type"] = _TYPES.get(it.type, str)
            if it.choices is not None:
                kw["choices"] = [kw["type"](x) if kw["type"] is not str else str(x) for x in it.choices]
            if "nargs" in it.extra:
                kw["nargs"] = it.extra["nargs"]
        if it.extra.get("required"):
            kw["required"] = True
        p.add_argument(key, **kw)
    return p
