"""Helpers for the chart tests: the pinned tool binaries and kubeconform schemas built offline.

Schemas for kubeconform (strict: unknown fields rejected, as openapi2jsonschema's -strict does):
- built-in kinds from Kubernetes v1.36.3's ``api/openapi-spec/swagger.json`` in the Go module cache
  (downloaded by ``tools/build.sh`` for tools/k8s), one file per kind, definitions inlined;
- LeaderWorkerSet from the LWS v0.9.0 CRD in the Go module cache (tools/lws), its openAPIV3Schema.
Nothing is fetched from the network.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "dsv3"
KINDS = ["Secret", "ConfigMap", "Service", "Pod", "PersistentVolumeClaim", "PodDisruptionBudget",
         "NetworkPolicy", "Job"]


def tool(name: str) -> str:
    """A pinned tool: $DSV3CTL_TOOLS_BIN/<name>, the tools/build.sh bin directory, or PATH. Fails (not
    skips) when missing: `make test` builds the tools first."""
    dirs = [os.environ.get("DSV3CTL_TOOLS_BIN", "")]
    try:
        dirs.append(subprocess.run([str(ROOT / "tools" / "build.sh"), "--print"], capture_output=True, text=True,
                                   check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    for d in dirs:
        if d and (Path(d) / name).is_file():
            return str(Path(d) / name)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: run `make tools` (tools/build.sh) or set DSV3CTL_TOOLS_BIN")
    return found


def go_module_dir(tools_subdir: str, module: str) -> Path:
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    out = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", module], cwd=ROOT / "tools" / tools_subdir,
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    if not out:
        pytest.fail(f"{module} is not in the Go module cache: run `make tools`")
    return Path(out)


def _strict(node):  # type: ignore[no-untyped-def]
    """Reject unknown fields; map Kubernetes' int-or-string to JSON Schema."""
    if isinstance(node, dict):
        if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node and not node.get(
                "x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        if node.get("nullable"):
            t = out.get("type")
            if isinstance(t, str):
                out["type"] = [t, "null"]
            out.pop("nullable", None)
        return out
    if isinstance(node, list):
        return [_strict(x) for x in node]
    return node


def _refs(node):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v.rsplit("/", 1)[-1]
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for x in node:
            yield from _refs(x)


def _closure(defs: dict, root: str) -> dict:
    """Only the definitions ``root`` reaches (the whole swagger does not compile as one draft-4 document)."""
    need: set[str] = set()
    todo = [root]
    while todo:
        x = todo.pop()
        if x not in need:
            need.add(x)
            todo += list(_refs(defs[x]))
    return {k: defs[k] for k in sorted(need)}


def build_schemas(dest: Path) -> Path:
    """Write kubeconform schema files into ``dest``; return it. Layout: {{.ResourceKind}}{{.KindSuffix}}.json."""
    k8s = go_module_dir("k8s", "k8s.io/kubernetes")
    swagger = json.loads((k8s / "api" / "openapi-spec" / "swagger.json").read_text())
    defs = _strict(swagger["definitions"])
    for name, d in swagger["definitions"].items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            if gvk["kind"] not in KINDS:
                continue
            group = gvk["group"].split(".")[0] if gvk["group"] else ""
            suffix = f"-{group}-{gvk['version']}" if group else f"-{gvk['version']}"
            schema = {"definitions": _closure(defs, name), "$ref": f"#/definitions/{name}"}
            (dest / f"{gvk['kind'].lower()}{suffix}.json").write_text(json.dumps(schema))
    lws = go_module_dir("lws", "sigs.k8s.io/lws")
    crd = yaml.safe_load((lws / "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml").read_text())
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(copy.deepcopy(v1["schema"]["openAPIV3Schema"]))
    schema["properties"]["metadata"] = {"type": "object"}
    (dest / "leaderworkerset-leaderworkerset-v1.json").write_text(json.dumps(schema))
    return dest


def kubeconform(files: list[Path], schemas: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kubeconform"), "-strict", "-summary", "-output", "text",
         "-schema-location", str(schemas) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json", *map(str, files)],
        capture_output=True, text=True, check=False)
