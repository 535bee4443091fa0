"""Adapter to the ``helm`` binary (subprocess; Helm v3.x and v4.x both work).

Found as ``$DSV3CTL_HELM``, ``helm`` on PATH, or the pinned helm ``make tools`` builds (:func:`find_helm`). Every call raises :class:`dsv3ctl.errors.RuntimeFailure`
(exit 1) with helm's own stderr when helm fails, and when helm is missing (naming how to get it).
Source: Helm CLI reference (helm.sh/docs/helm), ``helm template --kube-version/--api-versions``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from dsv3ctl.errors import RuntimeFailure

#: Kubernetes version ``render`` assumes (the chart's kubeVersion needs >= 1.27; the testbed runs 1.36).
RENDER_KUBE_VERSION = "1.36.0"
LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"


#: where ``tools/build.sh`` (``make tools``, ``make test``, ``make demo``) keeps the pinned binaries:
#: ``<cache>/<key>/bin`` with ``helm`` (Helm v4, tools/helm4/go.mod) and ``helm3`` (tools/helm3/go.mod)
TOOLS_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dsv3ctl" / "tools"


def _pinned_helm() -> str | None:
    """``helm`` of the pinned tools: ``$DSV3CTL_TOOLS_BIN/helm``, else the newest ``<cache>/*/bin/helm``."""
    env = os.environ.get("DSV3CTL_TOOLS_BIN")
    cands = [Path(env) / "helm"] if env else sorted(TOOLS_CACHE.glob("*/bin/helm"), key=lambda p: p.stat().st_mtime,
                                                     reverse=True)
    return next((str(c) for c in cands if c.is_file() and os.access(c, os.X_OK)), None)


_SAID: set[str] = set()


def find_helm() -> str:
    """Path of the helm executable: ``$DSV3CTL_HELM``, else ``helm`` on PATH, else the pinned helm that
    ``make tools`` builds (:data:`TOOLS_CACHE`; a note on stderr says which file is used). RuntimeFailure
    when none is found."""
    env = os.environ.get("DSV3CTL_HELM")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise RuntimeFailure(f"DSV3CTL_HELM={env} is not an executable file")
        return env
    found = shutil.which("helm")
    if found:
        return found
    pinned = _pinned_helm()
    if pinned:
        if pinned not in _SAID:
            _SAID.add(pinned)
            sys.stderr.write(f"note: helm is not on PATH; using the pinned {pinned} (built by `make tools`)\n")
        return pinned
    raise RuntimeFailure("helm is not on PATH and no pinned helm was built",
                         hint="install Helm 3.x or 4.x (https://helm.sh/docs/intro/install/), run `make tools` in "
                              "a dsv3ctl checkout (builds the pinned helm into ~/.cache/dsv3ctl/tools), or set "
                              "DSV3CTL_HELM=/path/to/helm")


def run(args: list[str], *, timeout: float | None = None, helm: str | None = None) -> str:
    """Run ``helm ARGS``; return stdout. RuntimeFailure (helm's stderr) on a non-zero exit or timeout."""
    exe = helm or find_helm()
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"helm {args[0]} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeFailure(f"helm {' '.join(args[:2])} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def template(chart: Path, release: str, namespace: str, values_file: Path, *, helm: str | None = None,
             kube_version: str = RENDER_KUBE_VERSION) -> str:
    """``helm template`` with the LWS API declared available; returns the multi-document YAML."""
    return run(["template", release, str(chart), "--namespace", namespace, "-f", str(values_file),
                "--kube-version", kube_version, "--api-versions", LWS_API_VERSION], helm=helm)


def split_manifests(text: str) -> list[dict[str, Any]]:
    """Objects of a multi-document YAML stream, empty documents dropped."""
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d]


def upgrade_install(chart: Path, release: str, namespace: str, values_file: Path, *, timeout_s: int = 300,
                    create_namespace: bool = False, kill_after_s: float = 60, helm: str | None = None) -> str:
    """``helm upgrade --install --timeout TIMEOUT_S`` (no --wait: dsv3ctl watches the group itself); helm is
    killed ``kill_after_s`` seconds after its own timeout."""
    args = ["upgrade", "--install", release, str(chart), "--namespace", namespace, "-f", str(values_file),
            "--timeout", f"{timeout_s}s"]
    if create_namespace:
        args.append("--create-namespace")
    return run(args, timeout=timeout_s + kill_after_s, helm=helm)


def uninstall(release: str, namespace: str, *, timeout_s: int = 300, kill_after_s: float = 60,
              helm: str | None = None) -> str:
    """``helm uninstall --wait --timeout TIMEOUT_S``; helm is killed ``kill_after_s`` seconds after that (an
    API server that stops answering can hold helm's own requests). RuntimeFailure when the release does
    not exist."""
    return run(["uninstall", release, "--namespace", namespace, "--wait", "--timeout", f"{timeout_s}s"],
               timeout=timeout_s + kill_after_s, helm=helm)


def release_exists(release: str, namespace: str, *, timeout_s: float = 60, helm: str | None = None) -> bool:
    """Whether a release of that name exists in any state. ``helm status`` answers the same on Helm 3 and 4
    (``helm list --all`` is gone in Helm 4, which lists every state by default). RuntimeFailure when helm
    does not finish within ``timeout_s``."""
    try:
        run(["status", release, "--namespace", namespace], timeout=timeout_s, helm=helm)
    except RuntimeFailure as err:
        if "not found" in err.message:
            return False
        raise
    return True
